#!/usr/bin/env bash
# Set up ultralytics-slim and run a slim recipe end to end, offline, on a CPU, in a few minutes:
# install -> generate a synthetic detection set -> `yolo train ... slim=prune_distill.yaml` -> report.
# Usage: bash examples/demo.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[qat,test]"

export YOLO_OFFLINE=1
DATA=$(python -m ultralytics_slim.data --task detect --out datasets/shapes --n-train 200 --n-val 50 --imgsz 128)
yolo train model=yolov8n.yaml data="$DATA" epochs=12 imgsz=128 batch=16 workers=0 device=cpu plots=False \
  project="$PWD/runs/demo" name=prune_distill exist_ok=True slim=prune_distill.yaml
echo "Demo finished: see runs/demo/prune_distill (weights/best.pt, slim.yaml, results.csv, TensorBoard events)"
