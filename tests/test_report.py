"""What a run tells its user: one console line per pruning step, an honest report.md, one TensorBoard step per epoch.

Two tiny runs, one whose sparsity phase leaves no BatchNorm scale near zero (the default-like 1e-4 under AdamW) and one
that zeroes them all (a huge decoupled L1 under plain SGD), so the report's verdict must differ; every figure the report
states is checked against what the run left on disk.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
from pathlib import Path

import pytest
from conftest import train_args
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER

from ultralytics_slim import monitor
from ultralytics_slim.report import build_report

EPOCHS = 4
PRUNE = {"target": {"macs": 0.5}, "steps": 2, "start": 1, "end": 3}  # steps at the starts of epochs 2 and 3 (1-based)
RUNS = {  # nbs=batch: an optimizer step per batch (by default Ultralytics accumulates to 64 images)
    "weak": ({"strength": 1e-4}, {"nbs": 8}),
    "strong": ({"strength": 100.0}, {"nbs": 8, "optimizer": "SGD", "lr0": 0.02, "warmup_epochs": 0}),  # gammas to 0
}


class Lines(logging.Handler):
    """Collects what Ultralytics' logger prints."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory, detect_data) -> tuple[str, Path, str]:
    """(kind, run directory, console output) of a finished run with sparsity and two pruning steps."""
    sparsity, extra = RUNS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    recipe = {"sparsity": {"method": "bn_l1", "start": 0, "end": 1, **sparsity}, "prune": PRUNE}
    handler = Lines()
    LOGGER.addHandler(handler)
    try:
        YOLO("yolov8n.yaml").train(**train_args(tmp, data=detect_data, epochs=EPOCHS, **extra), slim=recipe)
    finally:
        LOGGER.removeHandler(handler)
    return request.param, tmp / "run", "\n".join(handler.lines)


def results(run: Path) -> dict[int, dict[str, float]]:
    with open(run / "results.csv") as f:
        return {int(r["epoch"]): {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}


def state(run: Path) -> dict:
    return load_checkpoint(run / "weights" / "last.pt")[1]["train_args"]["slim"]["state"]


def test_console_prints_every_step_with_its_own_figures(run):
    _, path, console = run
    history = state(path)["prune"]["history"]
    assert [h["step"] for h in history] == [1, 2]
    first, second = history
    assert second["params_before"] == first["params"] and second["gflops_before"] == first["gflops"]
    for h in history:
        line = next(ln for ln in console.splitlines() if f"step {h['step']}/2 at epoch {h['epoch'] + 1}:" in ln)
        assert f"{h['params_before'] / 1e6:.2f}M -> {h['params'] / 1e6:.2f}M params" in line
        assert f"{h['gflops_before']:.2f} -> {h['gflops']:.2f} GFLOPs" in line
        assert f"this step cut {len(h['cut'])} layers" in console
    # the per-step cuts chain from the starting widths to those of best.pt: what each step did, nothing cumulative
    widths = dict(state(path)["prune"]["start_channels"])
    for h in history:
        for name, (before, after) in h["cut"].items():
            assert widths[name] == before > after
            widths[name] = after
    assert widths == monitor.channel_counts(load_checkpoint(path / "weights" / "best.pt")[0])


def test_report_states_what_sparsity_reached_and_what_each_step_cost(run):
    kind, path, console = run
    report, rows = (path / "report.md").read_text(), results(path)
    start, final = (load_checkpoint(path / "weights" / w)[0] for w in ("start.pt", "best.pt"))
    n0, n1 = (sum(g.numel() for g in monitor.batchnorm_gammas(m).values()) for m in (start, final))
    below = rows[1]["slim/bn_sparsity@0.01"]  # the sparsity window is epoch 1
    assert f"At the end of the sparsity window (epoch 1), {below:.1%} of the BatchNorm channels" in report
    assert f"pruning removed {1 - n1 / n0:.1%} of them" in report
    warned = "sparsity did not polarize the BatchNorm scales enough" in console
    if kind == "weak":
        assert below == 0 and "**Not enough:**" in report and warned
    else:
        assert round(below * n0) >= n0 - n1 > 0 and "Sparsity worked" in report and not warned

    assert re.findall(r"^\| (\d) \| (\d) \| ", report, re.MULTILINE) == [("1", "2"), ("2", "3")]  # step, 1-based epoch
    layers = dict(re.findall(r"^\| (model\.\S+) \| \d+ \| (\d+) \|", report, re.MULTILINE))
    assert {n: int(c) for n, c in layers.items()} == monitor.channel_counts(final)
    assert "The starting model was untrained (model=yolov8n.yaml builds random weights" in report
    for png in ("report_channels.png", "report_gamma.png", "report_curves.png"):
        assert f"]({png})" in report and (path / png).stat().st_size > 10_000


def test_tensorboard_has_one_step_per_epoch(run):
    """The final validation of best.pt fires on_fit_epoch_end once more; it must not add a step epochs + 1."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, path, _ = run
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    for tag in ("slim/params", "slim/bn_sparsity@0.01", "slim/channels/model.0.conv"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, EPOCHS + 1)), tag
    assert len(state(path)["gamma_hist"]) == EPOCHS


@pytest.mark.parametrize("run", ["weak"], indirect=True)
def test_step_costs_come_from_the_validations_around_each_step(run, tmp_path, detect_data):
    """Distinct val mAP per epoch (the tiny runs validate at 0) make an off-by-one epoch visible."""
    copy = Path(shutil.copytree(run[1], tmp_path / "run"))
    with open(copy / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for row, value in zip(rows, (0.3, 0.1, 0.05, 0.25)):  # epochs 1-4: steps at the starts of epochs 2 and 3
        row["metrics/mAP50-95(B)"] = value
    with open(copy / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    build_report(copy, detect_data, 64, state(copy), device="cpu")
    report = (copy / "report.md").read_text()
    assert re.search(r"^\| 1 \| 2 \| .* \| 0\.300 \| 0\.100 \(-20\.0 pts\) \| next step \|", report, re.MULTILINE)
    second = r"^\| 2 \| 3 \| .* \| 0\.100 \| 0\.050 \(-5\.0 pts\) \| 0\.250 \(epoch 4\) \| \+20\.0 pts, all of it \|"
    assert re.search(second, report, re.MULTILINE)
    assert (
        "0.300 before the first step, 0.050 at the lowest (epoch 3), 0.250 at the end (epoch 4): fine-tuning "
        "recovered 80% of the drop" in report
    )
    assert "Val mAP50-95 over the sparsity window: 0.000 at the start, 0.300 at its end (+30.0 pts)" in report
