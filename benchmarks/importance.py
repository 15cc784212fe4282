"""Which channel-importance criterion should `prune.importance` default to? One-shot prune, then a short fine-tune.

    python benchmarks/run.py --quick --baseline-only     # builds the cached baseline and set this study reads
    python benchmarks/importance.py --model .work/runs/baseline@0-<id>/train/weights/best.pt \
        --data .work/datasets/hard-<id>/data.yaml        # default criteria, 50% MACs, 3 epochs, seed 0
    python benchmarks/importance.py ... --criteria bn_scale_norm,l2 --seeds 0,1

For every criterion (and seed) a copy of `--model` is pruned to `--macs` of its MACs with `prune_to` (after the prune
technique's gradient pass over 16 training batches for a gradient criterion such as `taylor`), given BatchNorm
statistics of its own weights as the technique gives them (8 training batches), validated at once,
saved as a pruned checkpoint and fine-tuned by a stock `YOLO(pt).train(...)` with the same hyperparameters for every
criterion. The criterion decides both which channels go and how the cut is shared between layers, so each record also
keeps the layer left with the smallest fraction of its channels. Records go to `--out/<criterion>-s<seed>.json` and are
reused by the next invocation (delete one to redo it); the markdown table of all records goes to stdout.

Fine-tuning uses SGD at the stock lr0=0.01 without warmup: for a few epochs Ultralytics' warmup spans the whole run
(at least 100 iterations), and its bias lr of 0.1 would then dominate what a pruned model recovers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
SETTINGS = ("model", "macs", "epochs", "lr0", "imgsz", "batch")  # a record is reused only if made with these
DEFAULT_CRITERIA = "taylor,bn_scale,l1,l2,bn_scale_norm,lamp,bn_scale_lamp,random"


def train_args(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The fine-tune of every criterion: the quick benchmark's training settings plus a fixed SGD schedule."""
    return {
        "data": args.data,
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "nbs": args.batch,  # an optimizer step per batch
        "workers": 0,
        "device": "cpu",
        "plots": False,
        "verbose": False,
        "optimizer": "SGD",
        "lr0": args.lr0,
        "warmup_epochs": 0,
        "seed": seed,
        "deterministic": True,
    }


def validate(pt: Path, args: argparse.Namespace, folder: Path) -> float:
    """Val mAP50-95 of a checkpoint from Ultralytics' validator."""
    from ultralytics import YOLO

    metrics = YOLO(str(pt)).val(
        data=args.data, imgsz=args.imgsz, batch=args.batch, device="cpu", workers=0, plots=False, verbose=False,
        project=str(folder), name="val", exist_ok=True,
    )  # fmt: skip
    return float(metrics.box.map)


def prune(criterion: str, args: argparse.Namespace, folder: Path) -> tuple[Path, dict[str, Any]]:
    """Prune a copy of `--model` with `criterion`, save it as a pruned checkpoint; what the cut did."""
    from ultralytics import YOLO

    from ultralytics_slim import pruning
    from ultralytics_slim.importance import NEEDS_GRADIENTS
    from ultralytics_slim.markers import PRUNED_KEY
    from ultralytics_slim.techniques.prune import loss_gradients, recalibrate_bn

    yolo = YOLO(args.model)
    model = yolo.model.float()
    macs, _ = pruning.count_macs_params(model, args.imgsz)
    trainer = training_batches(args)
    if criterion in NEEDS_GRADIENTS:
        saved = model.args
        model.args = trainer.args  # the loss's gains, as `yolo train` sets them
        loss_gradients(model, trainer)
        model.args = saved
    r = pruning.prune_to(model, "macs", macs * args.macs, importance=criterion, imgsz=args.imgsz, seed=0)
    recalibrate_bn(model, trainer)  # as the technique does after a step
    model.yaml[PRUNED_KEY] = True  # as the prune technique marks it: rebuilt from the file, not from the yaml scale
    kept = {n: r.channels_after[n] / c for n, c in r.channels_before.items()}
    worst = min(kept, key=lambda n: (kept[n], n))
    pt = folder / "pruned.pt"
    yolo.save(pt)
    return pt, {
        "macs_ratio": r.macs_after / r.macs_before,
        "params_ratio": r.params_after / r.params_before,
        "min_kept": kept[worst],
        "min_kept_layer": f"{worst} {r.channels_before[worst]}->{r.channels_after[worst]}",
        "channels": r.channels_after,
    }


def training_batches(args: argparse.Namespace, **overrides: Any) -> Any:
    """What the prune technique reads its batches from (a trainer's args, epoch, loader and batch preprocessing): the
    training set as `yolo train` batches it (with `overrides` of its training arguments, e.g. mosaic=0.0)."""
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DEFAULT_CFG

    cfg, data = get_cfg(DEFAULT_CFG, {"imgsz": args.imgsz, **overrides}), check_det_dataset(args.data)
    loader = build_dataloader(build_yolo_dataset(cfg, data["train"], args.batch, data, mode="train"), args.batch, 0)
    return SimpleNamespace(  # epoch 0 of a run of cfg.epochs (100): mosaic as the arguments say
        args=cfg,
        epoch=0,
        epochs=cfg.epochs,
        train_loader=loader,
        preprocess_batch=lambda b: {**b, "img": b["img"].float() / 255},
    )


def curve(run: Path) -> list[float]:
    """Val mAP50-95 after each epoch from the run's results.csv."""
    with open(run / "results.csv") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    return [float(row["metrics/mAP50-95(B)"]) for row in rows]


def study(criterion: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Prune, validate, fine-tune and validate again; the record of one criterion and seed."""
    from ultralytics import YOLO

    from ultralytics_slim import pruning
    from ultralytics_slim.markers import is_pruned

    folder = args.out / f"{criterion}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    pt, cut = prune(criterion, args, folder)
    pruned_map = validate(pt, args, folder)
    yolo = YOLO(str(pt))
    yolo.train(**train_args(args, seed), project=str(folder), name="train", exist_ok=True)
    best = folder / "train" / "weights" / "best.pt"
    tuned = YOLO(str(best)).model
    macs_tuned, _ = pruning.count_macs_params(tuned.float(), args.imgsz)
    macs_pruned, _ = pruning.count_macs_params(YOLO(str(pt)).model.float(), args.imgsz)
    if not is_pruned(tuned) or abs(macs_tuned / macs_pruned - 1) > 1e-6:
        raise RuntimeError(f"{best}: fine-tuning did not keep the pruned widths ({macs_tuned} vs {macs_pruned} MACs)")
    maps = curve(folder / "train")
    return {
        "criterion": criterion,
        "seed": seed,
        **{k: getattr(args, k) for k in SETTINGS},
        **cut,
        "map_pruned": pruned_map,
        "map_curve": maps,
        "map_final": maps[-1],
        "map_best": max(maps),
        "seconds": time.perf_counter() - t0,
    }


def table(records: list[dict[str, Any]], baseline: float) -> str:
    """Markdown tables: per criterion over seeds (best mean final mAP first), then every run."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["criterion"], []).append(r)
    lines = [
        f"Unpruned model: val mAP50-95 {baseline:.3f}.\n",
        "| criterion | seeds | params kept | mAP50-95 pruned | mAP50-95 fine-tuned, mean ± sd (min..max) |",
        "|---|---|---|---|---|",
    ]
    for c, rs in sorted(by.items(), key=lambda kv: -statistics.mean(r["map_final"] for r in kv[1])):
        finals = [r["map_final"] for r in rs]
        sd = f" ± {statistics.stdev(finals):.3f}" if len(finals) > 1 else ""
        lines.append(
            f"| {c} | {len(rs)} | {rs[0]['params_ratio']:.3f} | {rs[0]['map_pruned']:.3f} | "
            f"**{statistics.mean(finals):.3f}**{sd} ({min(finals):.3f}..{max(finals):.3f}) |"
        )
    lines += [
        "",
        "| criterion | seed | MACs | mAP50-95 per fine-tune epoch | smallest kept layer |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["criterion"], r["seed"])):
        per_epoch = " / ".join(f"{m:.3f}" for m in r["map_curve"])
        lines.append(
            f"| {r['criterion']} | {r['seed']} | {r['macs_ratio']:.3f} | {per_epoch} | "
            f"{r['min_kept']:.3f} ({r['min_kept_layer']}) |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the criteria not yet recorded in `--out`, then print the table of every record there."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="trained .pt to prune (e.g. the quick benchmark's cached baseline)")
    ap.add_argument("--data", required=True, help="its data.yaml (e.g. the quick benchmark's set)")
    ap.add_argument(
        "--criteria", default=DEFAULT_CRITERIA, help="comma-separated names from ultralytics_slim.importance"
    )
    ap.add_argument("--seeds", default="0", help="comma-separated fine-tune seeds")
    ap.add_argument("--macs", type=float, default=0.5, help="kept MACs ratio")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tune epochs")
    ap.add_argument("--lr0", type=float, default=0.01, help="fine-tune SGD learning rate")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=HERE / ".work" / "importance", help="records folder (resumable)")
    args = ap.parse_args()
    args.model, args.data = str(Path(args.model).resolve()), str(Path(args.data).resolve())
    args.out = args.out.resolve()  # Ultralytics would put a relative project under its runs folder

    from ultralytics.utils import LOGGER

    from ultralytics_slim.importance import IMPORTANCES

    criteria = args.criteria.split(",")
    unknown = [c for c in criteria if c not in IMPORTANCES]
    if unknown:
        ap.error(f"unknown criteria {unknown}; registered: {list(IMPORTANCES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    base_file = args.out / "baseline.json"
    if not base_file.exists():
        base_file.write_text(json.dumps({"model": args.model, "map": validate(Path(args.model), args, args.out)}))
    if json.loads(base_file.read_text())["model"] != args.model:
        ap.error(f"{args.out} holds a study of another model: pass another --out")
    for seed in (int(s) for s in args.seeds.split(",")):
        for c in criteria:
            rec = args.out / f"{c}-s{seed}.json"
            if rec.exists():
                settings = {k: json.loads(rec.read_text())[k] for k in SETTINGS}
                if settings != {k: getattr(args, k) for k in SETTINGS}:
                    ap.error(f"{rec} was made with {settings}: pass another --out for other settings")
                LOGGER.info(f"importance study: {c} seed {seed} already recorded in {rec}")
                continue
            LOGGER.info(f"importance study: {c} seed {seed} ...")
            r = study(c, seed, args)
            rec.write_text(json.dumps(r, indent=1))
            LOGGER.info(f"importance study: {c} seed {seed}: {r['map_pruned']:.3f} -> {r['map_final']:.3f} "
                        f"in {r['seconds'] / 60:.1f} min")  # fmt: skip
    records = [json.loads(p.read_text()) for p in sorted(args.out.glob("*-s*.json"))]
    print(table(records, json.loads(base_file.read_text())["map"]))


if __name__ == "__main__":
    main()
