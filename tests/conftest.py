"""Shared fixtures: tiny synthetic data sets (nothing downloads here) and small, fast training arguments."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ultralytics_slim.data import make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every generated data set of the session."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def detect_data(data_root: Path) -> str:
    """A 16-image detection set at 64 px."""
    return str(make_dataset(data_root / "detect", "detect", n_train=16, n_val=8, imgsz=64))


def train_args(tmp_path: Path, name: str = "run", **kwargs) -> dict:
    """Arguments for a tiny CPU training run that finishes in seconds."""
    return {
        "epochs": 2,
        "imgsz": 64,
        "batch": 8,
        "workers": 0,
        "device": "cpu",
        "plots": False,
        "project": str(tmp_path),
        "name": name,
        "exist_ok": True,
        "verbose": False,
        **kwargs,
    }


def cli(args: dict) -> list[str]:
    """The same arguments as `key=value` words for the `yolo` command."""
    return [f"{k}={v}" for k, v in args.items()]
