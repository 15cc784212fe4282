"""How far a checkpoint's BatchNorm running statistics are from its own weights', and what that costs in val mAP.

    python benchmarks/bn_stats.py --model .work/runs/<row>/train/weights/best.pt \
        --data .work/datasets/hard-<id>/data.yaml --imgsz 160 --batches 8 8 8 32
    python benchmarks/bn_stats.py --model .work/runs/teacher-v8s@0-<id>/train/weights/best.pt ... --batches 8 32 \
        --train '{"prune": {"target": {"macs": 0.2862}, "importance": "taylor", "steps": 3, "start": 0, "end": 0.3,
                  "lr_scale": 3.0}, "report": {"latency_runs": 0}}' --epochs 10 --stop-after 1

With `--train`, `--model` is first trained by `yolo train` with that recipe (the benchmark's settings: batch 16,
nbs 16, workers 0, seed 0, deterministic) and stopped after `--stop-after` epochs; its `last.pt` is what is measured
(with `--epochs 10` every epoch is a close-mosaic one, as in the benchmark's fine-tunes). The checkpoint is validated
as saved, then once per `--batches` entry with the running statistics re-estimated by the prune technique's
`recalibrate_bn` over that many training batches (at most one pass over the set, mosaic off; each entry a draw
of its own). Also printed: per BatchNorm layer, the median over channels of running variance / re-estimated variance
(the first entry's). `--stale` trains without the technique's own re-estimation: the same weights (its batches never
move the run's), with the statistics training left them, as the plugin saved them before commit 689c4d8.
"""

from __future__ import annotations

import argparse
import json
import os
from copy import deepcopy
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from importance import training_batches
from torch import nn


def trained(args: argparse.Namespace) -> Path:
    """`last.pt` of a `yolo train` of `--model` with the `--train` recipe, stopped after `--stop-after` epochs."""
    from ultralytics import YOLO

    yolo = YOLO(args.model)

    def stop(trainer) -> None:
        trainer.stop = trainer.stop or trainer.epoch + 1 >= args.stop_after

    yolo.add_callback("on_fit_epoch_end", stop)
    project = Path(args.out).resolve()
    yolo.train(data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=16, nbs=16, workers=0, seed=0,
               deterministic=True, device="cpu", plots=False, slim=json.loads(args.train), project=str(project),
               name="train", exist_ok=True)  # fmt: skip
    return project / "train" / "weights" / "last.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint to measure (or to train first, with --train)")
    p.add_argument("--data", required=True, help="its data.yaml")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, nargs="+", default=[8], help="re-estimate over this many batches, each")
    p.add_argument("--train", help="a slim recipe as JSON: train --model with it first")
    p.add_argument("--epochs", type=int, default=10, help="the training's epochs (with --train)")
    p.add_argument("--stop-after", type=int, default=1, help="stop the training after this many epochs")
    p.add_argument("--out", default="runs/bn_stats", help="where the training goes (with --train)")
    p.add_argument(
        "--stale",
        action="store_true",
        help="train without the re-estimation: the statistics as the plugin saved them before 689c4d8",
    )
    args = p.parse_args()

    from ultralytics import YOLO

    from ultralytics_slim.techniques import prune
    from ultralytics_slim.techniques.prune import recalibrate_bn

    if args.stale:
        prune.recalibrate_bn = lambda *_, **__: None  # what the technique calls after a step and before validation
    pt = trained(args) if args.train else Path(args.model)
    yolo = YOLO(str(pt))
    saved = yolo.model.float()
    batches = training_batches(args, mosaic=0.0)

    def val(model: nn.Module) -> float:
        yolo.model = model
        return yolo.val(data=args.data, imgsz=args.imgsz, batch=16, device="cpu", plots=False, verbose=False).box.map

    print(f"{pt}: val mAP50-95 as saved {val(deepcopy(saved)):.4f}")
    fresh = []
    for k, n in enumerate(args.batches):
        model = deepcopy(saved)
        batches.args.seed = k  # a draw of its own per entry (the technique draws one per seed and epoch)
        recalibrate_bn(model, batches, n)
        fresh.append(model)
        n = min(n, len(batches.train_loader))  # at most one pass over the set
        print(f"  BatchNorm statistics over {n} training batches: {val(deepcopy(model)):.4f}")
    print("running variance / re-estimated variance, median per layer:")
    for (name, a), b in zip(saved.named_modules(), fresh[0].modules()):
        if isinstance(a, nn.modules.batchnorm._BatchNorm):
            print(f"  {name:24s} {float((a.running_var / b.running_var.clamp_min(1e-12)).median()):.2f}")


if __name__ == "__main__":
    main()
