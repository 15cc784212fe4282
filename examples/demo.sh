#!/usr/bin/env bash
# Set up ultralytics-slim and show what slimming a trained model costs, offline, on a CPU, in a few minutes:
# install -> synthetic detection set -> a stock YOLOv8n baseline -> that baseline slimmed with prune.yaml.
# runs/demo/prune/report.md then compares the baseline (weights/start.pt) with the slim model (weights/best.pt).
# Usage: bash examples/demo.sh    (in a virtual environment: it installs torch and more, see the README)
set -euo pipefail
cd "$(dirname "$0")/.."

if python -c 'import os, sys; sys.exit(sys.prefix != sys.base_prefix or "CONDA_PREFIX" in os.environ)'; then
  echo "Not in a virtual environment: torch (5.5 GB with its CUDA libraries) and more go into your own Python" >&2
fi
python -m pip install -q torch==2.14.1 torchvision==0.29.1  # keeps an installed 2.14.1 build, e.g. the CPU-only one
python -m pip install -q -e ".[qat,openvino,test]"

export YOLO_OFFLINE=1  # nothing to download: models are built from their yaml, the data is generated
python -m ultralytics_slim.data --task detect --out datasets/shapes --n-train 200 --n-val 50 --imgsz 128 >/dev/null
rm -rf runs/demo  # this script's own output; a rerun starts clean
RUN=(data=datasets/shapes/data.yaml imgsz=128 batch=16 workers=0 device=cpu plots=False project="$PWD/runs/demo")
yolo train model=yolov8n.yaml epochs=40 name=baseline "${RUN[@]}"
yolo train model=runs/demo/baseline/weights/best.pt epochs=15 name=prune slim=prune.yaml "${RUN[@]}"
echo "Demo finished: runs/demo/prune/report.md compares the baseline with the slim model (weights/best.pt)"
