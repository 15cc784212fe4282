"""Shared fixtures: tiny synthetic data sets (nothing downloads here) and small, fast training arguments."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import pickletools
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ultralytics_slim.data import make_dataset


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every generated data set of the session."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def detect_data(data_root: Path) -> str:
    """A 16-image detection set at 64 px."""
    return str(make_dataset(data_root / "detect", "detect", n_train=16, n_val=8, imgsz=64))


@pytest.fixture(scope="session")
def qat_weights(tmp_path_factory: pytest.TempPathFactory, detect_data: str) -> Path:
    """best.pt of a stock `quantize=8` run: the checkpoint format the quantize technique hands its runs over to."""
    from ultralytics import YOLO

    tmp = tmp_path_factory.mktemp("stock_qat")
    YOLO("yolov8n.yaml").train(**train_args(tmp, data=detect_data, epochs=1, batch=4, quantize=8))
    return tmp / "run" / "weights" / "best.pt"


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


def side_trainer(data_yaml: str, epoch: int = 0, epochs: int = 100, batch: int = 4, preprocess: Callable = lambda b: b,
                 **overrides) -> SimpleNamespace:  # fmt: skip
    """What a technique reads of a trainer to draw batches of its own (`side_batches`): its arguments (Ultralytics'
    defaults at 64 px, with `overrides`), epoch, data and training set, and its batch preprocessing."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    args, data = get_cfg(overrides={"imgsz": 64, **overrides}), check_det_dataset(data_yaml)
    dataset = build_yolo_dataset(args, data["train"], batch, data, mode="train")
    return SimpleNamespace(
        args=args,
        epoch=epoch,
        epochs=epochs,
        data=data,
        train_loader=SimpleNamespace(dataset=dataset, batch_size=batch),
        preprocess_batch=preprocess,
    )


def cli(args: dict) -> list[str]:
    """The same arguments as `key=value` words for the `yolo` command."""
    return [f"{k}={v}" for k, v in args.items()]


# Prepended to code run in a child interpreter: from there on, importing ultralytics_slim fails as if it were not
# installed, and the start-up hook's patches are gone; proves a checkpoint or export needs nothing of the plugin.
BLOCK_PLUGIN = """
import sys
class Block:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] == "ultralytics_slim":
            raise ImportError("ultralytics-slim is not installed here")
sys.meta_path[:] = [Block] + [f for f in sys.meta_path if getattr(f, "__module__", "").partition(".")[0] != "ultralytics_slim"]
for m in [m for m in sys.modules if m.partition(".")[0] == "ultralytics_slim"]:
    del sys.modules[m]
"""


class Interrupt(Exception):
    """Raised from a callback to cut a run short, as a crash or Ctrl-C would."""


def interrupt_at(epoch: int) -> Callable[[Any], None]:
    """A callback that raises Interrupt once the trainer reaches `epoch` (register it on the event to cut at)."""

    def stop(trainer: Any) -> None:
        if trainer.epoch == epoch:
            raise Interrupt

    return stop


def run_yolo(*words: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the stock `yolo` console script, as a user would."""
    exe = shutil.which("yolo")
    assert exe, "the `yolo` command is not on PATH"
    return subprocess.run([exe, *words], cwd=cwd, check=False, capture_output=True, text=True, timeout=600)


def events(run_dir: Path) -> tuple[set[str], set[str]]:
    """Scalar and histogram tags of the TensorBoard event files in a run directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])


def pickled_modules(path: Path) -> set[str]:
    """Top-level packages of every class a checkpoint's pickle refers to."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    mods, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE"}:
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            mods.add(strings[-2].split(".")[0])
        elif op.name == "GLOBAL":
            mods.add(arg.split(" ")[0].split(".")[0])
    return mods
