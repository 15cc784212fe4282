"""Start-up hook, run by `ultralytics_slim.pth` in every interpreter: patch Ultralytics when (and only if) it loads.

It must stay tiny: no torch, no Ultralytics, nothing but `sys` at start-up. It installs a meta-path finder that waits
for `ultralytics.utils` and `ultralytics.engine.model` to be imported, runs their module code unchanged, then applies
`ultralytics_slim._patch`. Any failure there is reported as a warning and leaves stock Ultralytics untouched.
"""

import sys

_TARGETS = {"ultralytics.utils", "ultralytics.engine.model"}


def _apply(name: str, module: object) -> None:
    """Patch one freshly executed Ultralytics module; never raise into the importer."""
    try:
        from ultralytics_slim import _patch

        _patch.apply(name, module)
    except Exception as e:  # noqa: BLE001 - a broken plugin must never break stock Ultralytics
        import warnings

        warnings.warn(f"ultralytics-slim could not patch {name}, slim= is unavailable: {e!r}", stacklevel=2)


class _Finder:
    """Meta-path finder that defers to the real finders and wraps `exec_module` of the target modules."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in _TARGETS:
            return None
        _TARGETS.discard(name)
        if not _TARGETS:
            sys.meta_path.remove(cls)
        for finder in sys.meta_path:
            if finder is cls or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _apply(name, module)

        loader.exec_module = exec_and_patch  # instance attribute: the loader class stays stock
        return spec


def install() -> None:
    """Register the finder once, unless Ultralytics is already imported (then patch right away)."""
    if _Finder in sys.meta_path:
        return
    for name in _TARGETS & sys.modules.keys():  # a new set: _TARGETS shrinks in the loop
        _TARGETS.discard(name)
        _apply(name, sys.modules[name])
    if _TARGETS:
        sys.meta_path.insert(0, _Finder)


install()
