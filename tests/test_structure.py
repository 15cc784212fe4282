"""The package's structure: one phase table that a new technique joins with one config class and one module, and an
import graph without cycles (imports inside functions count; `if TYPE_CHECKING:` blocks never run and do not)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from conftest import train_args
from pydantic import Field
from ultralytics import YOLO

from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import PHASES, PhaseConfig, When, load_recipe, register_phase, unregister_phase
from ultralytics_slim.schedule import build_schedule
from ultralytics_slim.techniques import Technique, technique_class

PACKAGE = Path(__file__).resolve().parents[1] / "ultralytics_slim"


# ---------------------------------------------------------------- a throwaway phase: one config class, one technique
class ShrinkConfig(PhaseConfig):
    """Scale every BatchNorm weight once, at given epochs (a toy technique that visibly changes the model)."""

    needs_ended: ClassVar[dict[str, str]] = {"sparsity": "shrinking would undo what sparsity measured"}

    factor: float = Field(0.5, gt=0, lt=1, description="scale applied to BN weights")
    start: When = 0
    end: When = 1.0

    def events(self, window: Any) -> tuple[tuple[int, ...], list[str]]:
        return (window.start,), []


class ShrinkTechnique(Technique):
    """Records when it acted (state, so resume would see it) and exposes a per-epoch metric."""

    config = ShrinkConfig

    def __init__(self, name: str, cfg: ShrinkConfig, schedule: Any):
        super().__init__(name, cfg, schedule)
        self.acted: list[int] = []

    def on_epoch_start(self, trainer: Any) -> bool:
        if trainer.epoch in self.events and trainer.epoch not in self.acted:
            for m in trainer.model.modules():
                if hasattr(m, "running_var"):
                    m.weight.data.mul_(self.cfg.factor)
            self.acted.append(trainer.epoch)
        return False

    def metrics(self, trainer: Any) -> dict[str, float]:
        return {"slim/shrinks": float(len(self.acted))}

    def state(self) -> dict[str, Any]:
        return {"acted": self.acted}


@pytest.fixture
def shrink_phase():
    phase = register_phase("shrink", ShrinkConfig, f"{__name__}:ShrinkTechnique", before="prune")
    yield phase
    unregister_phase("shrink")


def test_a_registered_phase_runs_through_train(tmp_path, detect_data, shrink_phase):
    assert list(PHASES) == ["sparsity", "distill", "shrink", "prune", "quantize"]
    assert technique_class(shrink_phase) is ShrinkTechnique
    with pytest.raises(SlimConfigError, match=r"'shrink\.factr' is not a valid key\. Did you mean 'factor'"):
        load_recipe({"shrink": {"factr": 0.5}})
    with pytest.raises(SlimConfigError, match="shrinking would undo what sparsity measured"):
        build_schedule(load_recipe({"sparsity": {"end": 2}, "shrink": {"start": 1}}), 4)

    model = YOLO("yolov8n.yaml")
    model.train(**train_args(tmp_path, data=detect_data, epochs=2), slim={"shrink": {"factor": 0.25, "start": 1}})
    run = tmp_path / "run"
    assert yaml.safe_load((run / "slim.yaml").read_text()) == {
        "shrink": {"factor": 0.25, "start": 1, "end": 1.0},
        "report": {"latency_runs": 0},
    }
    assert model.trainer.slim.technique("shrink").acted == [1]
    header = (run / "results.csv").read_text().splitlines()[0]
    assert "slim/shrinks" in header


def test_unknown_phase_key_is_rejected_once_unregistered():
    with pytest.raises(SlimConfigError, match="'shrink' is not a valid key"):
        load_recipe({"shrink": {}})


def test_table_and_techniques_agree():
    for phase in PHASES.values():
        cls = technique_class(phase)
        assert cls.config is phase.config


def test_a_technique_of_the_wrong_config_is_refused():
    phase = register_phase("mismatch", ShrinkConfig, "ultralytics_slim.techniques.prune:PruneTechnique")
    try:
        with pytest.raises(TypeError, match="must be a Technique with config = ShrinkConfig"):
            technique_class(phase)
    finally:
        unregister_phase("mismatch")


# ------------------------------------------------------------------------------------------------------ import graph
def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules imported anywhere in a file, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            }
    return {m for m in found if m in modules}


def test_import_graph_has_no_cycle():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(files)) - {m} for m in files.items() for m, p in [m]}
    assert graph["ultralytics_slim.controller"]  # the parser sees imports at all
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*path, m, n])}"
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
