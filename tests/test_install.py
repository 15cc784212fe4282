"""`pip install .` and `pip install -e .` each install a working start-up hook (checked in isolated interpreters)."""

from __future__ import annotations

import importlib.util
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli, train_args

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("editable", [False, True], ids=["pip install .", "pip install -e ."])
def test_installed_hook_makes_stock_cli_accept_slim(tmp_path, detect_data, editable):
    target = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        str(target),
        *(["-e"] if editable else []),
        str(REPO),
    ]
    subprocess.run(pip, check=True, capture_output=True, timeout=600)
    assert (target / "ultralytics_slim.pth").exists()
    words = " ".join(cli(train_args(tmp_path, data=detect_data, model="yolov8n.yaml", epochs=1)))
    # -S: no site processing, so the development install of this interpreter is invisible, and this interpreter's
    # site-packages are added as plain paths (their .pth files do not run). They come from this process: in a venv, a
    # child started with -S computes the base interpreter's. Then the installed copy's site dir is processed exactly as
    # site-packages would be (its .pth file runs the hook).
    ultralytics = importlib.util.find_spec("ultralytics").origin
    code = f"""
import sys, site
sys.path.extend({site.getsitepackages()!r})
site.addsitedir({str(target)!r})
assert "ultralytics_slim._hook" in sys.modules and "torch" not in sys.modules
import ultralytics
assert ultralytics.__file__ == {ultralytics!r}, ultralytics.__file__  # this environment's Ultralytics, not another's
import ultralytics_slim
origin = ultralytics_slim.__file__
assert origin.startswith({str(REPO if editable else target)!r}), origin
from ultralytics.cfg import entrypoint
entrypoint("yolo train {words} slim=sparsity.yaml")
"""
    r = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "run" / "slim.yaml").read_text())["sparsity"]["method"] == "bn_l1"
