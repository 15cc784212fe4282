"""The recipe: what `slim=` points at, parsed once into a typed schema that rejects unknown keys.

A recipe has any subset of four sections (`sparsity`, `prune`, `distill`, `quantize`). `start`/`end` are epochs (int)
or fractions of the run's `epochs` (float in [0, 1]), so one recipe serves any run length; `schedule.py` resolves them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ultralytics_slim.errors import SlimConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"
DOCS = "the Recipes section of the ultralytics-slim README (examples: ultralytics_slim/recipes/)"

When = Union[int, float]  # int: an epoch; float in [0, 1]: a fraction of the run's epochs


class _Section(BaseModel):
    """Common base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("start", "end", check_fields=False)
    @classmethod
    def _check_when(cls, v: When) -> When:
        if isinstance(v, bool) or v < 0:
            raise ValueError("must be an epoch (int >= 0) or a fraction of the run (float in [0, 1])")
        if isinstance(v, float) and v > 1:
            raise ValueError(f"a float is a fraction of the run and must be <= 1; write {int(v)} for an epoch")
        return v


class SparsityConfig(_Section):
    """Sparsity regularization (network slimming) that drives prunable channels towards zero before pruning."""

    method: Literal["bn_l1", "group_lasso"] = Field("bn_l1", description="L1 on BN scales, or group lasso on coupled channel groups")
    strength: float = Field(1e-4, gt=0, description="regularization strength (lambda)")
    decay: Literal["none", "linear"] = Field("none", description="'linear' decays the strength to 0 over the window")
    start: When = Field(0, description="first epoch of the phase")
    end: When = Field(0.5, description="epoch at which the phase stops")
    ignore: list[str] = Field(default_factory=list, description="module names or class names left unregularized")


class PruneTarget(BaseModel):
    """What the pruned model keeps: a ratio of the starting model's MACs or parameters."""

    model_config = ConfigDict(extra="forbid")

    macs: float | None = Field(None, gt=0, lt=1, description="kept fraction of MACs")
    params: float | None = Field(None, gt=0, lt=1, description="kept fraction of parameters")

    @model_validator(mode="after")
    def _one_of(self) -> PruneTarget:
        if (self.macs is None) == (self.params is None):
            raise ValueError("give exactly one of 'macs' or 'params', e.g. {macs: 0.5}")
        return self

    @property
    def kind(self) -> Literal["macs", "params"]:
        return "macs" if self.macs is not None else "params"

    @property
    def ratio(self) -> float:
        return self.macs if self.macs is not None else self.params


class PruneConfig(_Section):
    """Iterative structured channel pruning with fine-tuning between the steps."""

    target: PruneTarget = Field(default_factory=lambda: PruneTarget(macs=0.5), description="ratio of MACs or params to keep")
    importance: Literal["bn_scale", "l1", "l2", "random"] = Field("bn_scale", description="channel ranking")
    steps: int = Field(4, ge=1, le=100, description="number of pruning steps spread over [start, end)")
    start: When = Field(0.5, description="epoch of the first pruning step")
    end: When = Field(0.8, description="epoch by which the target is reached")
    round_to: int = Field(8, ge=1, description="kept channel counts are multiples of this")
    min_channels: int = Field(8, ge=1, description="floor of channels kept in every layer")
    ignore: list[str] = Field(default_factory=list, description="module names (prefix) or class names to keep")


class DistillConfig(_Section):
    """Teacher-guided distillation on the detection head's outputs."""

    teacher: str = Field("self", description="'self' (the model before pruning) or a checkpoint path")
    weight: float = Field(1.0, gt=0, description="weight of the distillation loss")
    loss: Literal["head"] = Field("head", description="'head': class-score and box-distribution distillation")
    temperature: float = Field(1.0, gt=0, description="softening of teacher distributions")
    start: When = Field(0.5, description="first epoch with the teacher")
    end: When = Field(1.0, description="epoch at which distillation stops")


class QuantizeConfig(_Section):
    """INT8 quantization-aware training with nvidia-modelopt; must be the last phase."""

    bits: Literal[8] = Field(8, description="only INT8 is supported")
    start: When = Field(0.9, description="first QAT epoch; QAT runs to the end of training")
    calib_batches: int = Field(16, ge=1, description="training batches used to calibrate ranges")


class ReportConfig(BaseModel):
    """What the end-of-run report measures."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_runs: int = Field(0, ge=0, description="timed CPU forward passes per model; 0 leaves latency out")


class Recipe(BaseModel):
    """A whole recipe; every section is optional."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sparsity: SparsityConfig | None = None
    prune: PruneConfig | None = None
    distill: DistillConfig | None = None
    quantize: QuantizeConfig | None = None
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _not_empty(self) -> Recipe:
        if not any((self.sparsity, self.prune, self.distill, self.quantize)):
            raise ValueError("the recipe has no section; use one or more of sparsity, prune, distill, quantize")
        return self


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped inside the package."""
    return sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))


def _resolve_path(source: str | Path) -> Path:
    """A path as given, else a recipe shipped with the package (like Ultralytics resolves `coco8.yaml`)."""
    path = Path(source)
    if path.exists():
        return path
    for name in (path.name, f"{path.name}.yaml"):
        if (RECIPES_DIR / name).exists():
            return RECIPES_DIR / name
    close = difflib.get_close_matches(path.name, shipped_recipes(), n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise SlimConfigError(
        f"slim={source!r}: no such file, and no shipped recipe of that name.{hint} "
        f"Shipped recipes: {shipped_recipes()}."
    )


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at a location of the recipe, for 'did you mean' messages."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def _format(error: ValidationError, source: str) -> str:
    """One line per problem: the key path, the bad value, what is allowed and the closest match."""
    lines = [f"invalid slim recipe {source}:"]
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<recipe>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Recipe, e["loc"])
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            lines.append(f"  '{key}' is not a valid key.{hint} Valid keys: {allowed}")
        else:
            lines.append(f"  '{key}'={e.get('input')!r}: {e['msg']}")
    lines.append(f"See {DOCS}")
    return "\n".join(lines)


def load_recipe(source: str | Path | dict | Recipe) -> Recipe:
    """Load and validate a recipe from a path, a shipped recipe name, a dict or a Recipe.

    Args:
        source (str | Path | dict | Recipe): `prune.yaml`, a path to a YAML file, or the recipe as data.

    Returns:
        (Recipe): The validated recipe.

    Raises:
        SlimConfigError: On an unknown key or a bad value, naming the key, the value and what is allowed.

    Examples:
        >>> recipe = load_recipe("prune.yaml")
        >>> recipe.prune.target.macs
        0.5
    """
    if isinstance(source, Recipe):
        return source
    name = "<dict>"
    if not isinstance(source, dict):
        path = _resolve_path(source)
        name = str(path)
        try:
            source = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SlimConfigError(f"invalid slim recipe {name}: not valid YAML ({e})") from None
        if not isinstance(source, dict):
            raise SlimConfigError(f"invalid slim recipe {name}: expected a mapping of sections, got {type(source).__name__}")
    try:
        return Recipe.model_validate(source)
    except ValidationError as e:
        raise SlimConfigError(_format(e, name)) from None
