"""Exceptions raised by ultralytics-slim.

SlimError                 base class, catch this to handle any plugin error
├── SlimConfigError       a recipe key or value is invalid, or the schedule does not fit the run
└── SlimDependencyError   a technique asked for in the recipe needs a package that is not installed
"""

from __future__ import annotations


class SlimError(Exception):
    """Base class of every ultralytics-slim error."""


class SlimConfigError(SlimError, ValueError):
    """A recipe is invalid; raised before any run directory is created."""


class SlimDependencyError(SlimError, ImportError):
    """A requested technique needs an optional package; the message says what to install."""
