"""Teacher-guided distillation on the head's outputs, for a student whose width changes during the run.

Ultralytics' own `distill_model=` wraps the model in a `DistillationModel` whose projectors are sized for the student's
channels when the run starts, and which is pickled into checkpoints. Neither fits a student that is pruned mid-run
and must end as an ordinary checkpoint. This technique distils what does not depend on width: the class scores
(a Bernoulli KL per class and anchor), the box distributions (KL per side for DFL heads, L1 for YOLO26's direct boxes)
and any other per-anchor outputs (keypoints, angles, mask coefficients), each anchor weighted by the teacher's
confidence; for classification, the logits (KL); optionally from a teacher that also sees each image's mirror image
(`flip`), and the neck features, channel-wise, mapped to the teacher's channels by the pruning steps' record
(`teacher: self`) or by 1x1 projectors trained beside the model (a checkpoint teacher). The teacher and the projectors
live beside the model, never inside it, so neither is in the EMA or in `best.pt`;
`weights/teacher.pt` keeps a `self` teacher for `resume`.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import DistillConfig
from ultralytics_slim.techniques.base import Technique

PREFIX = colorstr("Slim distill: ")
RAW_KEYS_SKIPPED = {"feats"}  # neck features: their width differs between a pruned student and its teacher


def head_distill_loss(
    student: Any, teacher: Any, temperature: float = 1.0, gains: tuple[float, float] = (1.0, 1.0)
) -> torch.Tensor:
    """Width-independent distillation loss between raw (training-mode) head outputs of student and teacher.

    Normalized as Ultralytics normalizes its own detection loss, so that `weight: 1` makes the teacher count about as
    much as the labels: the class term is a Bernoulli KL summed over anchors and classes per unit of the teacher's
    confidence (the task divides by its target scores' sum; a plain mean would be thousands of times weaker), the box
    term a per-anchor divergence averaged with the teacher's confidence as weight (as the task weights by its target
    scores). `gains` are the task's (cls, dfl) gains, applied to the two terms.
    """
    if isinstance(student, torch.Tensor):  # classification logits
        t = temperature
        return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    if "one2many" in student:  # YOLO26 end-to-end head: both branches
        return sum(head_distill_loss(student[k], teacher[k], temperature, gains) for k in student) / len(student)
    t_logits = teacher["scores"].float() / temperature  # (B, nc, A)
    t_prob = t_logits.sigmoid()
    kl = F.binary_cross_entropy_with_logits(student["scores"].float() / temperature, t_prob, reduction="none")
    kl = kl - F.binary_cross_entropy_with_logits(t_logits, t_prob, reduction="none")  # minus the teacher's entropy
    loss = gains[0] * kl.sum() / t_prob.sum().clamp_min(1) * temperature**2
    weight = t_prob.amax(1)  # (B, A) teacher confidence per anchor
    weight = weight / weight.sum().clamp_min(1e-6)
    s_box, t_box = student["boxes"].float(), teacher["boxes"].float()
    b, c, a = s_box.shape
    if c > 4:  # DFL: a distribution over reg_max bins per box side
        s_log = F.log_softmax(s_box.view(b, 4, c // 4, a) / temperature, 2)
        t_prob_box = F.softmax(t_box.view(b, 4, c // 4, a) / temperature, 2)
        per_anchor = (t_prob_box * (t_prob_box.clamp_min(1e-9).log() - s_log)).sum(2).mean(1) * temperature**2
    else:
        per_anchor = (s_box - t_box).abs().mean(1)
    loss = loss + gains[1] * (per_anchor * weight).sum()
    for k, s in student.items():
        if k in {"scores", "boxes"} | RAW_KEYS_SKIPPED or not isinstance(s, torch.Tensor):
            continue
        diff = (s.float() - teacher[k].float()).pow(2)
        loss = loss + ((diff.mean(1) * weight).sum() if diff.dim() == 3 else diff.mean())
    return loss


def flip_average(plain: Any, mirrored: Any) -> Any:
    """A teacher's raw outputs for a batch and for its mirror image, averaged: a two-view ensemble, stronger than either.

    The mirror image's answers are mapped back anchor by anchor (each level's grid flipped in x, the left and right box
    sides swapped) and averaged as probabilities. Keypoints, angles, mask coefficients and features stay the plain
    view's: their mirror images need more than a flip (swapped keypoint ids, negated angles, flipped prototypes).
    """
    if isinstance(plain, torch.Tensor):  # classification logits
        return ((plain.float().softmax(1) + mirrored.float().softmax(1)) / 2).log()
    if "one2many" in plain:  # YOLO26 end-to-end head: both branches
        return {k: flip_average(plain[k], mirrored[k]) for k in plain}
    sizes = [f.shape[-2:] for f in plain["feats"]]

    def back(t: torch.Tensor) -> torch.Tensor:
        levels = t.float().split([h * w for h, w in sizes], -1)
        return torch.cat([v.unflatten(-1, (h, w)).flip(-1).flatten(-2) for v, (h, w) in zip(levels, sizes)], -1)

    scores = (plain["scores"].float().sigmoid() + back(mirrored["scores"]).sigmoid()) / 2
    b, c, a = plain["boxes"].shape
    boxes = plain["boxes"].float().view(b, 4, c // 4, a)
    sides = back(mirrored["boxes"]).view(b, 4, c // 4, a)[:, [2, 1, 0, 3]]  # (left, top, right, bottom) mirrored
    if c > 4:  # DFL: a distribution over bins per side
        boxes = ((boxes.softmax(2) + sides.softmax(2)) / 2).clamp_min(1e-9).log()
    else:
        boxes = (boxes + sides) / 2
    return {**plain, "scores": torch.logit(scores, eps=1e-6), "boxes": boxes.view(b, c, a)}


def _head(model: nn.Module) -> str:
    """The head's class, and whether it is end-to-end: what decides the layout of the outputs that are distilled."""
    head = model.model[-1]
    return type(head).__name__ + (" (end-to-end)" if getattr(head, "end2end", False) else "")


class Projectors(nn.Module):
    """Per head input, a 1x1 convolution from the student's channels to a checkpoint teacher's (the alignment layer of
    channel-wise distillation), trained with the student and dropped at the end: never in the model, the EMA or
    `best.pt`.

    A pruning step narrows the student's feature maps; `follow` then drops the input columns of the removed channels,
    so that what was learned for the others is kept. `cols[i]` names the student channel (its index before the first
    pruning step) that column j of projector i reads.
    """

    def __init__(self, student: list[int], teacher: list[int], cols: list[list[int]]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(s, t, 1, bias=False) for s, t in zip(student, teacher))
        self.cols = cols

    def follow(self, kept: list[list[int] | None]) -> bool:
        """Keep the columns of the channels that survived (`kept`: per input, its surviving channels, or None when
        unpruned); True if a projector changed, so that its optimizer state must start afresh."""
        changed = False
        for i, k in enumerate(kept):
            if k is None or k == self.cols[i]:
                continue
            pos = {c: j for j, c in enumerate(self.cols[i])}
            old = self.convs[i]
            new = nn.Conv2d(len(k), old.out_channels, 1, bias=False).to(old.weight)
            new.weight.data = old.weight.data[:, [pos[c] for c in k]].clone()
            self.convs[i], self.cols[i], changed = new, list(k), True
        return changed

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]


def feature_distill_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], kept: list[list[int] | None], temperature: float = 1.0
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., 2021) of the neck features the head reads, against the same channels.

    Each channel's activations become a distribution over its spatial positions (softmax at `temperature`) and the
    student's is pulled towards the teacher's (KL): where a channel fires matters, not its scale, so a student in
    training-mode BatchNorm and a teacher in eval mode compare fairly. For `teacher: self` the student's channels are
    a subset of the teacher's (`kept`, recorded by the pruning steps), so no projector is needed; for a checkpoint
    teacher the student's features come through `Projectors` and `kept` is None.
    """
    losses = []
    for s, t, idx in zip(student, teacher, kept):
        t = t if idx is None else t[:, idx]
        s_log = F.log_softmax(s.float().flatten(2) / temperature, 2)
        t_log = F.log_softmax(t.float().flatten(2) / temperature, 2)
        losses.append((t_log.exp() * (t_log - s_log)).sum(2).mean() * temperature**2)
    return sum(losses) / len(losses)


def _strides(model: nn.Module) -> list[float]:
    """The head's strides: features are compared position by position, so a teacher must have the student's."""
    return [float(x) for x in getattr(model.model[-1], "stride", [])]


def _feats(preds: dict) -> list[torch.Tensor]:
    """The neck features a training-mode Detect-family head returns beside its outputs."""
    return preds.get("one2many", preds)["feats"]


def _feature_bns(model: nn.Module) -> list[str]:
    """The BN that produces each feature map the head reads: its channel indices are what pruning records."""
    names = []
    for j in model.model[-1].f:
        layer = model.model[j]
        conv = layer.cv2 if hasattr(layer, "cv2") and hasattr(layer.cv2, "bn") else layer
        if not hasattr(conv, "bn"):
            raise SlimConfigError(
                f"distill.loss=feature: cannot map the channels of model.{j} ({type(layer).__name__})"
            )
        names.append(f"model.{j}.{'cv2.' if conv is not layer else ''}bn")
    return names


class DistillCriterion:
    """The model's criterion plus the distillation term, reported as its own loss column ('distill').

    Deep copies (the EMA, checkpoint snapshots) get no criterion at all, so the teacher never travels with the model.
    """

    def __init__(self, criterion: Any, technique: DistillTechnique):
        self.criterion = criterion
        self.technique = technique

    def __call__(self, preds: Any, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, items = self.criterion(preds, batch)
        extra = self.technique.loss(preds, batch)
        self.technique.record(float(loss.detach().sum()), float(extra.detach()) * batch["img"].shape[0])
        return torch.cat([loss.reshape(-1), extra.reshape(1) * batch["img"].shape[0]]), {
            **items,
            "distill": extra.detach(),
        }

    def __getattr__(self, name: str) -> Any:
        if name in {"criterion", "technique"}:  # not yet set (copy/unpickle): avoid recursion
            raise AttributeError(name)
        return getattr(self.criterion, name)  # e.g. `update()` of the end-to-end loss

    def __deepcopy__(self, memo: dict) -> None:
        return None


class DistillTechnique(Technique):
    """Distil a frozen teacher (the model the run starts from, or a larger checkpoint) into the student."""

    config = DistillConfig

    cfg: DistillConfig

    def __init__(self, name: str, cfg: DistillConfig, schedule: Any):
        super().__init__(name, cfg, schedule)
        self.teacher: nn.Module | None = None
        self.epoch = 0
        self._gains = (1.0, 1.0)  # the task's (cls, dfl) gains, which scale the head terms like the task's own
        self._bns: list[str] = []  # per head input: the BN whose kept channels map student features to the teacher's
        self._prune: Any = None  # the run's prune technique, which records the kept channels
        self._proj: Projectors | None = None  # a checkpoint teacher's feature projectors, and their optimizer
        self._proj_opt: torch.optim.Optimizer | None = None
        self._lr: dict[str, Any] = {}  # the trainer's optimizer group whose learning rate the projectors follow
        self._sums = [0.0, 0.0]  # this epoch's task and distillation loss, for the distillation's share

    @classmethod
    def preflight(cls, cfg: DistillConfig) -> None:
        """A teacher checkpoint must exist and load."""
        if cfg.teacher == "self":
            return
        try:
            load_checkpoint(cfg.teacher)
        except Exception as e:  # noqa: BLE001 - whatever torch.load raises, the user gets which key and why
            raise SlimConfigError(
                f"distill.teacher={cfg.teacher!r} is not a readable Ultralytics checkpoint: {e}"
            ) from None

    def check(self, trainer: Any) -> None:
        """A teacher checkpoint must match the student's head, classes and input channels; then it is adopted.

        The head is compared by its module class, not by a task name, which a checkpoint without `train_args` lacks.
        """
        if self.cfg.flip and not trainer.args.fliplr:
            raise SlimConfigError(
                "distill.flip=true shows the teacher mirror images, which assumes what training with fliplr > 0 "
                f"assumes (a mirrored image holds the same classes); this run has fliplr={trainer.args.fliplr}"
            )
        if self.cfg.teacher == "self":
            return
        teacher = load_checkpoint(self.cfg.teacher)[0]
        student = unwrap_model(trainer.model)
        ours = (_head(student), dict(trainer.data["names"]), student.yaml.get("channels", 3), _strides(student))
        theirs = (_head(teacher), dict(teacher.names), teacher.yaml.get("channels", 3), _strides(teacher))
        for what, a, b in zip(("head", "classes", "input channels", "strides"), ours, theirs):
            if a != b:
                raise SlimConfigError(f"distill.teacher={self.cfg.teacher!r} has {what} {b}, the student has {a}")
        self._adopt(teacher, trainer)

    def _teacher_file(self, trainer: Any) -> Path:
        return trainer.wdir / "teacher.pt"

    def _adopt(self, teacher: nn.Module, trainer: Any) -> None:
        """Freeze a teacher on the trainer's device: train-mode head (raw outputs), eval-mode BatchNorm."""
        teacher = teacher.float().to(trainer.device)
        teacher.requires_grad_(False)
        teacher.train()
        for m in teacher.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        teacher.criterion = None
        self.teacher = teacher

    def setup(self, trainer: Any) -> None:
        """Wrap the criterion; on resume, reload a `self` teacher from the snapshot kept in weights/teacher.pt."""
        model = unwrap_model(trainer.model)
        self._gains = (float(trainer.args.cls), float(trainer.args.dfl))
        if "feature" in self.cfg.loss:
            if not isinstance(model.model[-1], Detect):
                raise SlimConfigError(f"distill.loss={self.cfg.loss!r} needs a Detect-family head, not {_head(model)}")
            self._bns, self._prune = _feature_bns(model), trainer.slim.technique("prune")
            if self.cfg.teacher != "self":  # fresh on resume too: they are relearned in a few steps
                kept = self._prune.kept if self._prune else {}
                widths = [model.get_submodule(n).num_features for n in self._bns]
                self._proj = Projectors(
                    widths,
                    [self.teacher.get_submodule(n).num_features for n in _feature_bns(self.teacher)],
                    [list(kept.get(n, range(w))) for n, w in zip(self._bns, widths)],
                ).to(trainer.device)
                self._lr = next(
                    (g for g in trainer.optimizer.param_groups if g.get("param_group") == "weight"),
                    trainer.optimizer.param_groups[0],
                )
                self._proj_opt = self._projector_optimizer()
        model.criterion = DistillCriterion(getattr(model, "criterion", None) or model.init_criterion(), self)
        if self.cfg.teacher == "self" and trainer.start_epoch > 0 and self._teacher_file(trainer).exists():
            self._adopt(load_checkpoint(self._teacher_file(trainer))[0], trainer)

    def on_epoch_start(self, trainer: Any) -> bool:
        """Snapshot the model as the teacher at the run's first epoch, before sparsity or pruning change it.

        Sparsity fades the channels pruning will take long before the first pruning step, so a snapshot taken then
        would already have lost what the student lost, and would teach nothing.
        """
        self.epoch = trainer.epoch
        if self.cfg.teacher == "self" and self.teacher is None:
            snapshot = deepcopy(trainer.ema.ema)
            if RANK in {-1, 0}:
                torch.save(
                    {"model": deepcopy(snapshot).half(), "train_args": vars(trainer.args)}, self._teacher_file(trainer)
                )
                LOGGER.info(
                    f"{PREFIX}teacher = the model the run starts from (epoch {trainer.epoch + 1}), kept in {self._teacher_file(trainer)}"
                )
            self._adopt(snapshot, trainer)
        return False

    def loss(self, preds: Any, batch: dict) -> torch.Tensor:
        """Weighted distillation loss for a training batch; zero outside the phase."""
        if self.teacher is None or self.epoch not in self.window or isinstance(preds, tuple):
            return torch.zeros((), device=batch["img"].device)  # tuple: an eval-mode forward (e.g. QAT calibration)
        with torch.no_grad():
            t_preds = self.teacher(batch["img"])
            if self.cfg.flip:
                t_preds = flip_average(t_preds, self.teacher(batch["img"].flip(-1)))
        loss = torch.zeros((), device=batch["img"].device)
        if "head" in self.cfg.loss:
            loss = loss + head_distill_loss(preds, t_preds, self.cfg.temperature, self._gains)
        if "feature" in self.cfg.loss:
            kept = [self._prune.kept.get(n) if self._prune else None for n in self._bns]
            feats = _feats(preds)
            if self._proj is not None:
                if self._proj.follow(kept):  # a pruning step narrowed the student since the last batch
                    self._proj_opt = self._projector_optimizer()
                feats, kept = self._proj(feats), [None] * len(kept)
            loss = loss + feature_distill_loss(feats, _feats(t_preds), kept, self.cfg.temperature)
        return self.cfg.weight * loss

    def _projector_optimizer(self) -> torch.optim.Optimizer:
        """AdamW or SGD as the trainer's weights have it (its learning rate is copied at every step), no decay; under
        DDP every rank starts from rank 0's projectors."""
        if dist.is_available() and dist.is_initialized():
            for p in self._proj.parameters():
                dist.broadcast(p.data, 0)
        params, g = self._proj.parameters(), self._lr
        if "betas" in g:
            return torch.optim.AdamW(params, lr=g["lr"], betas=g["betas"], weight_decay=0.0)
        return torch.optim.SGD(params, lr=g["lr"], momentum=g.get("momentum", 0.9), nesterov=g.get("nesterov", False))

    def on_grads_unscaled(self, trainer: Any) -> None:
        """Step the projectors with the model: their gradients unscaled as AMP unscaled the model's, a step skipped
        where AMP skips it (an overflow)."""
        if self._proj_opt is None:
            return
        grads = [p.grad for p in self._proj.parameters() if p.grad is not None]
        ranks = max(trainer.world_size, 1)  # 0 on CPU
        if grads and ranks > 1:  # DDP averages the model's gradients over ranks; these too
            for g in grads:
                dist.all_reduce(g)
        if grads and all(bool(torch.isfinite(g).all()) for g in grads):
            scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else 1.0
            for g in grads:
                g.div_(scale * ranks)
            for group in self._proj_opt.param_groups:
                group["lr"] = self._lr["lr"]
            self._proj_opt.step()
        self._proj_opt.zero_grad(set_to_none=True)

    def record(self, task: float, distill: float) -> None:
        """Accumulate one batch's task and distillation loss (the share says whether distillation can matter)."""
        self._sums[0] += task
        self._sums[1] += distill

    def metrics(self, trainer: Any) -> dict[str, float]:
        """The distillation's share of the total training loss this epoch (0 outside the phase)."""
        task, distill = self._sums
        self._sums = [0.0, 0.0]
        return {"slim/distill_share": distill / (task + distill) if task + distill else 0.0}
