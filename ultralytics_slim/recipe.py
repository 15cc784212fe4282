"""The recipe: what `slim=` points at, parsed once into a typed schema that rejects unknown keys.

A recipe has one optional section per registered phase (`sparsity`, `prune`, `distill`, `quantize`, in that acting
order) and `report`. `start`/`end` are epochs (int) or fractions of the run's `epochs` (float in [0, 1]), so one recipe
serves any run length; `schedule.py` resolves them.

`PHASES` is the one table of phases: key -> config class -> technique. The recipe's fields, the empty-recipe check,
the acting order and the schedule's ordering rules are all derived from it, and the rules themselves are data on each
config class (`needs_ended`, `runs_to_end`). A new technique is one `PhaseConfig` subclass, one `Technique` module and
one `register_phase` call (see "Adding a technique" in the README).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.importance import ALLOCATIONS, IMPORTANCES, NEEDS_GRADIENTS, Allocation

if TYPE_CHECKING:
    from ultralytics_slim.schedule import Window

RECIPES_DIR = Path(__file__).parent / "recipes"
DOCS = "the Recipes section of the ultralytics-slim README (examples: ultralytics_slim/recipes/)"

When = int | float  # int: an epoch; float in [0, 1]: a fraction of the run's epochs


class _Section(BaseModel):
    """Common base: unknown keys and non-finite numbers are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PhaseConfig(_Section):
    """Base of a phase's section: a window of epochs and, as data, how it may be placed relative to other phases.

    Subclasses declare `start` (and `end`, unless `runs_to_end`) with their defaults.
    """

    needs_ended: ClassVar[dict[str, str]] = {}  # phases that must end before this one starts -> why (shown to the user)
    runs_to_end: ClassVar[bool] = False  # no `end` key: the phase lasts to the end of the run

    @field_validator("start", "end", mode="before", check_fields=False)
    @classmethod
    def _check_when(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, (int, float)) and v < 0):
            raise ValueError("must be an epoch (int >= 0) or a fraction of the run (float in [0, 1])")
        if isinstance(v, float) and v > 1:
            raise ValueError(f"a float is a fraction of the run and must be <= 1; write {int(v)} for an epoch")
        return v

    def events(self, window: Window) -> tuple[tuple[int, ...], list[str]]:
        """Epochs (within `window`) at whose start the phase acts once, and notes for the user about them."""
        return (), []

    def schedule_problems(self, windows: dict[str, Window]) -> list[str]:
        """Rules that depend on this config's values and other phases' windows; each problem is one message."""
        return []


class SparsityConfig(PhaseConfig):
    """Sparsity training that drives the channels pruning will remove to zero before it removes them."""

    method: Literal["bn_l1", "group_lasso"] = Field(
        "bn_l1", description="BN scales (and shifts), or every weight of a coupled channel"
    )
    strength: Literal["auto"] | float = Field(
        "auto",
        description="'auto': fade what pruning removes to zero; a number: decoupled L1, shrink lr * strength per step",
    )
    goal: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="fraction of prunable channels to zero; default: what prune.target removes, else 0.3",
    )
    decay: Literal["none", "linear"] = Field(
        "none", description="'linear' decays a numeric strength to 0 over the window"
    )
    start: When = Field(0, description="first epoch of the phase")
    end: When = Field(0.5, description="epoch at which the phase stops")
    ignore: list[str] = Field(default_factory=list, description="module names or class names left unregularized")

    @field_validator("strength", mode="before")
    @classmethod
    def _auto_or_positive(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")):
            return v
        raise ValueError("must be 'auto' or a number > 0 (the L1 strength lambda)")

    @model_validator(mode="after")
    def _decay_needs_number(self) -> SparsityConfig:
        if self.decay != "none" and self.strength == "auto":
            raise ValueError("'decay' applies to a numeric strength; 'strength: auto' sets its own schedule")
        return self


def cpu_block() -> int:
    """Channels a CPU runtime's convolution kernel computes at once here: 16 with AVX-512, 8 otherwise."""
    import torch  # only for a latency target: the schema itself stays light to import

    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


class PruneTarget(BaseModel):
    """What the pruned model keeps: a ratio of the starting model's MACs, parameters or deployed latency."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    macs: float | None = Field(None, gt=0, lt=1, description="kept fraction of MACs")
    params: float | None = Field(None, gt=0, lt=1, description="kept fraction of parameters")
    latency: float | None = Field(None, gt=0, lt=1, description="kept fraction of batch-1 latency in `runtime`")
    runtime: Literal["onnxruntime", "openvino"] | None = Field(
        None, description="CPU runtime a latency target is measured in (default: onnxruntime)"
    )
    imgsz: int | None = Field(
        None, ge=32, description="deployment image size of a latency target (default: the run's imgsz)"
    )

    @model_validator(mode="after")
    def _one_of(self) -> PruneTarget:
        if sum(v is not None for v in (self.macs, self.params, self.latency)) != 1:
            raise ValueError("give exactly one of 'macs', 'params' or 'latency', e.g. {macs: 0.5}")
        if self.latency is None and (self.runtime or self.imgsz):
            raise ValueError("'runtime' and 'imgsz' belong to a latency target, e.g. {latency: 0.5, runtime: openvino}")
        return self

    @property
    def kind(self) -> Literal["macs", "params", "latency"]:
        return "macs" if self.macs is not None else "params" if self.params is not None else "latency"

    @property
    def ratio(self) -> float:
        return getattr(self, self.kind)


class PruneConfig(PhaseConfig):
    """Iterative structured channel pruning with fine-tuning between the steps."""

    needs_ended: ClassVar[dict[str, str]] = {
        "sparsity": "pruning ranks the channels that sparsity training drove towards zero"
    }

    target: PruneTarget = Field(
        default_factory=lambda: PruneTarget(macs=0.5), description="ratio of MACs or params to keep"
    )
    importance: str = Field(
        "auto",
        description="channel ranking, a name registered in ultralytics_slim.importance; auto: bn_scale_lamp after a "
        "sparsity phase (it takes the channels sparsity faded), taylor (the loss gradient) otherwise",
    )
    steps: int = Field(3, ge=1, le=100, description="number of pruning steps spread over [start, end)")
    start: When = Field(0, description="epoch of the first pruning step (early: the most epochs left to recover)")
    end: When = Field(0.3, description="epoch by which the target is reached")
    round_to: Literal["auto"] | int = Field(
        "auto",
        description="kept channel counts are multiples of this; auto: 8, or for a latency target the block the CPU's "
        "convolution kernels compute in (16 with AVX-512, 8 otherwise)",
    )
    min_channels: int = Field(8, ge=1, description="floor of channels kept in every layer")
    max_step_cut: float = Field(
        0.5,
        gt=0,
        le=1,
        description="most of a layer's channels one step removes while other layers can still give what the step "
        "needs: a layer emptied at once can become the network's bottleneck (1.0: the ranking alone decides)",
    )
    allocation: Allocation = Field(
        "global",
        description="how a step's cut is spread over the layers: "
        + "; ".join(f"{name}: {what}" for name, what in ALLOCATIONS.items()),
    )
    ignore: list[str] = Field(default_factory=list, description="module names (prefix) or class names to keep")
    lr_scale: float = Field(
        1.0,
        gt=0,
        description="multiplies the run's learning rates from the first step to the end, never above 0.01 (a pruned "
        "network recovers faster at a training-size learning rate than at a fine-tuning one)",
    )

    @field_validator("round_to", mode="before")
    @classmethod
    def _auto_or_grid(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(
            "must be 'auto' or a whole number >= 1 (kept channel counts are multiples of it), e.g. 8 or 16"
        )

    @model_validator(mode="after")
    def _resolve_round_to(self) -> PruneConfig:
        """onnxruntime and OpenVINO compute convolutions in blocks of 16 channels with AVX-512 (8 with AVX2), so a width
        off that grid costs the time of the next multiple: a latency target gets the grid of the machine it is measured
        on (benchmarks/latency.py), other targets the finer 8, which kept slightly more mAP on the benchmark."""
        if self.round_to == "auto":
            self.round_to = cpu_block() if self.target.kind == "latency" else 8
        return self

    @field_validator("importance")
    @classmethod
    def _known_importance(cls, v: str) -> str:
        if v != "auto" and v not in IMPORTANCES:
            close = difflib.get_close_matches(v, list(IMPORTANCES), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown importance.{hint} Valid: {['auto', *IMPORTANCES]}")
        return v

    def events(self, window: Window) -> tuple[tuple[int, ...], list[str]]:
        """One step per epoch start, spread evenly, so that every step is followed by at least one fine-tuning epoch."""
        epochs = window.end - window.start
        steps = min(self.steps, epochs)
        notes = []
        if steps < self.steps:
            notes.append(
                f"prune.steps={self.steps} does not fit the {epochs} epoch(s) of the pruning window "
                f"({window.start}-{window.end}): taking {steps} step(s), one per epoch, so that each is followed by "
                f"fine-tuning; widen the window or lower steps to silence this"
            )
        return tuple(window.start + i * epochs // steps for i in range(steps)), notes


class DistillConfig(PhaseConfig):
    """Teacher-guided distillation on the detection head's outputs."""

    teacher: str = Field("self", description="'self' (the model the run starts from) or a checkpoint path")
    weight: float = Field(1.0, gt=0, description="weight of the distillation loss")
    loss: Literal["head", "feature", "head+feature"] = Field(
        "head",
        description="'head': class scores and box distributions; 'feature': the neck features, channel-wise (through "
        "1x1 projectors trained beside the model for a checkpoint teacher)",
    )
    temperature: float = Field(1.0, gt=0, description="softening of teacher distributions")
    flip: bool = Field(
        False,
        description="show the teacher each batch and its mirror image and distil the average of its two answers "
        "(a stronger teacher for one more teacher forward per batch); needs fliplr > 0",
    )
    start: When = Field(0.0, description="first epoch with the teacher")
    end: When = Field(1.0, description="epoch at which distillation stops")

    @field_validator("teacher")
    @classmethod
    def _absolute(cls, v: str) -> str:
        """Store an existing teacher file as an absolute path, so `resume` from another directory finds it."""
        return str(Path(v).expanduser().resolve()) if v != "self" and Path(v).expanduser().is_file() else v


class QuantizeConfig(PhaseConfig):
    """INT8 quantization-aware training with nvidia-modelopt; must be the last phase."""

    needs_ended: ClassVar[dict[str, str]] = {
        "sparsity": "QAT is the last phase",
        "prune": "QAT is the last phase and quantizes the final, pruned architecture",
    }
    runs_to_end: ClassVar[bool] = True

    bits: Literal[8] = Field(8, description="only INT8 is supported")
    start: When = Field(0.9, description="first QAT epoch; QAT runs to the end of training")
    calib_batches: int = Field(16, ge=1, description="training batches used to calibrate ranges")


class ReportConfig(_Section):
    """What the end-of-run report measures."""

    latency_runs: int = Field(0, ge=0, description="timed CPU forward passes per model; 0 leaves latency out")


@dataclass(frozen=True)
class Phase:
    """One row of the phase table."""

    key: str  # the recipe section, e.g. "prune"
    config: type[PhaseConfig]  # its schema
    technique: str  # "module:Class" of its Technique, imported when a run starts (the schema stays free of torch)
    extra: str = ""  # the pip extra that installs its optional packages, for the install hint


PHASES: dict[str, Phase] = {}  # in acting order within an epoch (the teacher is copied before a pruning step)


def register_phase(
    key: str, config: type[PhaseConfig], technique: str, *, extra: str = "", before: str | None = None
) -> Phase:
    """Add a phase to the table (at the end, or right before the phase `before`) and so to the recipe schema.

    Args:
        key (str): The recipe section that configures it.
        config (type[PhaseConfig]): Its config class.
        technique (str): "module:Class" of its `Technique` subclass, whose `config` must be `config`.
        extra (str): The pip extra of ultralytics-slim that installs its optional packages, if any.
        before (str, optional): An existing phase that this one must act before within an epoch.

    Returns:
        (Phase): The registered row.
    """
    if not (isinstance(config, type) and issubclass(config, PhaseConfig)):
        raise TypeError(f"phase {key!r}: config must be a PhaseConfig subclass, got {config!r}")
    if key in PHASES or key == "report":
        raise ValueError(f"phase {key!r} is already registered")
    if before is not None and before not in PHASES:
        raise ValueError(f"phase {key!r}: before={before!r} is not a registered phase {list(PHASES)}")
    phase = Phase(key, config, technique, extra)
    rows = list(PHASES.items())
    at = len(rows) if before is None else list(PHASES).index(before)
    rows.insert(at, (key, phase))
    PHASES.clear()
    PHASES.update(rows)
    return phase


def unregister_phase(key: str) -> None:
    """Remove a phase from the table (the recipe schema follows)."""
    PHASES.pop(key)


class Recipe(BaseModel):
    """A whole recipe: one optional section per registered phase, plus `report`. Validate with `load_recipe`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    report: ReportConfig = Field(default_factory=ReportConfig)

    def phases(self) -> list[tuple[str, PhaseConfig]]:
        """The recipe's sections, in acting order."""
        return [(k, getattr(self, k)) for k in PHASES if getattr(self, k, None) is not None]

    @model_validator(mode="after")
    def _not_empty(self) -> Recipe:
        if not self.phases():
            raise ValueError(f"the recipe has no section; use one or more of {list(PHASES)}")
        return self

    @model_validator(mode="after")
    def _resolve_importance(self) -> Recipe:
        """`importance: auto` is measured best for what precedes pruning: after sparsity training, |gamma| (with LAMP)
        knows which channels were faded; without it, the loss gradient (taylor) kept the most mAP on the benchmark
        (README, Results), ahead of LAMP on the conv weights, the best magnitude criterion (benchmarks/importance.py)."""
        prune, sparsity = getattr(self, "prune", None), getattr(self, "sparsity", None)
        if prune is not None and prune.importance == "auto":
            prune.importance = "bn_scale_lamp" if sparsity is not None else "taylor"
        if prune is not None and sparsity is not None and prune.importance in NEEDS_GRADIENTS:
            raise ValueError(
                f"prune.importance={prune.importance!r} ranks by the loss gradient at each pruning step, but sparsity "
                "training needs to know beforehand which channels to fade; with a sparsity section use importance "
                "auto (bn_scale_lamp)"
            )
        return self


@functools.cache
def _recipe_model(phases: tuple[Phase, ...]) -> type[Recipe]:
    return create_model("Recipe", __base__=Recipe, **{p.key: (p.config | None, None) for p in phases})


def recipe_model() -> type[Recipe]:
    """The Recipe schema of the phases registered now."""
    return _recipe_model(tuple(PHASES.values()))


register_phase("sparsity", SparsityConfig, "ultralytics_slim.techniques.sparsity:SparsityTechnique")
register_phase("distill", DistillConfig, "ultralytics_slim.techniques.distill:DistillTechnique")
register_phase("prune", PruneConfig, "ultralytics_slim.techniques.prune:PruneTechnique")
register_phase("quantize", QuantizeConfig, "ultralytics_slim.techniques.qat:QuantizeTechnique", extra="qat")


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped inside the package."""
    return sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))


def _resolve_path(source: str | Path) -> Path:
    """A file as given; a bare name may also be a recipe shipped with the package (as Ultralytics finds `coco8.yaml`)."""
    if not str(source).strip():
        raise SlimConfigError(f"slim={str(source)!r} is empty; give a recipe file or one of {shipped_recipes()}")
    path = Path(source).expanduser()
    if path.is_dir():
        raise SlimConfigError(
            f"slim={str(source)!r} is a directory, not a recipe file. Shipped recipes: {shipped_recipes()}."
        )
    if path.is_file():
        return path
    if path.is_absolute() or len(path.parts) > 1:  # a path with a directory part means that file, nothing else
        raise SlimConfigError(f"slim={str(source)!r}: no such file")
    for name in (path.name, f"{path.name}.yaml"):
        if (RECIPES_DIR / name).is_file():
            return RECIPES_DIR / name
    close = difflib.get_close_matches(path.name, shipped_recipes(), n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise SlimConfigError(
        f"slim={str(source)!r}: no such file, and no shipped recipe of that name.{hint} "
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


def _format(error: ValidationError, source: str, schema: type[Recipe]) -> str:
    """One line per problem: the key path, the bad value, what is allowed and the closest match."""
    lines = [f"invalid slim recipe {source}:"]
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<recipe>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(schema, e["loc"])
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            lines.append(f"  '{key}' is not a valid key.{hint} Valid keys: {allowed}")
        else:
            lines.append(f"  '{key}'={e.get('input')!r}: {e['msg']}")
    lines.append(f"See {DOCS}")
    return "\n".join(lines)


def _read(path: Path) -> dict:
    """The YAML mapping in a recipe file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise SlimConfigError(f"invalid slim recipe {path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        raise SlimConfigError(f"invalid slim recipe {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise SlimConfigError(f"invalid slim recipe {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


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
    if isinstance(source, dict):
        name, data = "<dict>", source
    elif isinstance(source, (str, Path)):
        path = _resolve_path(source)
        name, data = str(path), _read(path)
    else:
        raise SlimConfigError(
            f"slim={source!r}: expected a recipe file, the name of a shipped recipe {shipped_recipes()} or a mapping "
            f"of sections, got {type(source).__name__}"
        )
    schema = recipe_model()
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise SlimConfigError(_format(e, name, schema)) from None
