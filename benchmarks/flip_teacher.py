"""How much stronger a teacher is when it also sees each image's mirror image (`distill.flip`).

Validates a detection checkpoint twice, as it is and with its raw outputs for each image and its mirror image
averaged by the plugin's `flip_average` (what `flip: true` distils), and prints both mAP50-95:

    python benchmarks/flip_teacher.py runs/detect/train/weights/best.pt --data data.yaml --imgsz 160
"""

from __future__ import annotations

import argparse
import types

import torch
from ultralytics import YOLO
from ultralytics.nn.modules import Detect

from ultralytics_slim.techniques.distill import flip_average


def _flip_predict(self: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Stands in for Ultralytics' multi-scale test-time augmentation: the same image and its mirror image only."""
    plain, mirrored = self._predict_once(x)[1], self._predict_once(x.flip(-1))[1]  # eval mode: (decoded, raw)
    return self.model[-1]._inference(flip_average(plain, mirrored)), None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a YOLOv8 or YOLO11 detection checkpoint (.pt)")
    p.add_argument("--data", required=True, help="dataset yaml")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    scores = {}
    for flip in (False, True):
        model = YOLO(args.model)
        head = model.model.model[-1]
        if type(head) is not Detect or getattr(head, "one2one_cv2", None) is not None:  # decoded as YOLOv8/YOLO11 do
            raise SystemExit(f"{args.model}: a plain Detect head (YOLOv8, YOLO11) is needed, not YOLO26's or another")
        model.model._predict_augment = types.MethodType(_flip_predict, model.model)
        r = model.val(data=args.data, imgsz=args.imgsz, batch=args.batch, augment=flip, plots=False, verbose=False)
        scores["flip-averaged" if flip else "plain"] = r.box.map
    print(", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" ({scores['flip-averaged'] - scores['plain']:+.4f})")


if __name__ == "__main__":
    main()
