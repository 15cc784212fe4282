"""Attach ultralytics-slim explicitly in an existing training script (no reliance on the start-up hook).

Usage: python examples/explicit_trainer.py [--data path/to/data.yaml] [--model yolov8n.yaml] [--epochs 12]
Without --data it trains on the synthetic shapes set (generated offline in seconds).
"""

from __future__ import annotations

import argparse

from ultralytics import YOLO

from ultralytics_slim import SlimDetectionTrainer
from ultralytics_slim.data import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data YAML; default: a synthetic set in datasets/shapes")
    parser.add_argument("--model", default="yolov8n.yaml", help="a .pt checkpoint or a model yaml")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--recipe", default="prune_distill.yaml", help="a shipped recipe name or a path")
    args = parser.parse_args()

    data = args.data or str(make_dataset("datasets/shapes", "detect", n_train=200, n_val=50, imgsz=128))
    model = YOLO(args.model)
    model.train(
        trainer=SlimDetectionTrainer,  # Slim{Segmentation,Pose,OBB,Classification}Trainer for the other tasks
        slim=args.recipe,
        data=data,
        epochs=args.epochs,
        imgsz=128,
        device="cpu",
        plots=False,
        project="runs/examples",
        name="explicit",
    )
    print(f"pruned model: {model.trainer.best}\nreport: {model.trainer.save_dir / 'report.md'}")


if __name__ == "__main__":
    main()
