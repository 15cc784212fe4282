"""The benchmark's development set: synthetic detection that a YOLOv8n does not saturate.

The package's shape set (`ultralytics_slim.data`) is made for tests: 3 large, high-contrast, never-overlapping shapes
that a YOLOv8n learns in tens of epochs, so every model ends near the same ceiling and compression costs look like
noise. This set keeps the shapes-on-texture idea and adds what makes real detection hard:
- 12 classes, some alike (circle / hexagon / pentagon, square / diamond), told apart by outline only;
- 3-10 objects per image, box side 4-35% of the image drawn log-uniformly (many small objects);
- overlap: objects and distractors may hide up to 40% of an earlier object; labels box the visible part, as COCO does;
- clutter: unlabeled irregular blobs and lines in the same colours, soft patches in the background;
- lower contrast, pixel noise, some blur, JPEG files.

    python benchmarks/data.py --out benchmarks/.work/datasets   # prints the path to pass as `data=`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from ultralytics_slim.data import _OUTLINES, SHAPES

_FORMAT = 1  # bump when the drawing or the labels change: the folder name and every cache key built on it change
_SS = 8  # supersampling factor of the masks
_MIN_VISIBLE = 0.6  # an object stays labeled and visible for at least this fraction of its own pixels
_JPEG_QUALITY = 92


def _regular(n: int, start: float) -> np.ndarray:
    """A regular n-gon on the unit circle, first vertex at `start` degrees."""
    a = np.deg2rad(start + 360 / n * np.arange(n))
    return np.stack([np.cos(a), np.sin(a)], 1)


OUTLINES = {
    **_OUTLINES,
    "pentagon": _regular(5, -90),
    "hexagon": _regular(6, 0),
    "diamond": np.array([[0, -1], [0.55, 0], [0, 1], [-0.55, 0]], float),
    "ell": np.array([[-1, -1], [-0.35, -1], [-0.35, 0.45], [0.7, 0.45], [0.7, 1], [-1, 1]], float),
}
NAMES = (*SHAPES, "pentagon", "hexagon", "diamond", "ell")  # class index -> name


@dataclass(frozen=True)
class HardSet:
    """What decides every byte of the set; its `key` names the folder and enters the benchmark's cache keys."""

    n_train: int = 1000
    n_val: int = 300
    imgsz: int = 256
    seed: int = 0
    format: int = _FORMAT

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        return (
            f"hard synthetic detection set ({self.n_train} train / {self.n_val} val images, {self.imgsz}px, "
            f"{len(NAMES)} classes, 3-10 objects per image, seed {self.seed})"
        )


def _mask(poly: np.ndarray, imgsz: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixel coverage (0..1) of a polygon over its clipped bounding box, from a supersampled mask, and that box."""
    x0, y0 = np.clip(np.floor(poly.min(0)).astype(int), 0, imgsz)
    x1, y1 = np.clip(np.ceil(poly.max(0)).astype(int), 0, imgsz)
    mask = np.zeros((max(y1 - y0, 1) * _SS, max(x1 - x0, 1) * _SS), np.uint8)
    # sub-pixel j spans [j, j + 1) and OpenCV fills the sub-pixels whose centre j + 0.5 is inside
    cv2.fillPoly(mask, [np.round(((poly - [x0, y0]) * _SS - 0.5) * 16).astype(np.int32)], 255, shift=4)
    alpha = cv2.resize(mask, (mask.shape[1] // _SS, mask.shape[0] // _SS), interpolation=cv2.INTER_AREA)
    return (slice(y0, y0 + alpha.shape[0]), slice(x0, x0 + alpha.shape[1])), alpha.astype(np.float32) / 255


def _place(rng: np.random.Generator, outline: np.ndarray, size: float, imgsz: int) -> np.ndarray:
    """The outline stretched a little, rotated within +-20 degrees, `size` px on its longer side, anywhere inside."""
    a = rng.uniform(-1, 1) * np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    poly = (outline * rng.uniform(0.85, 1.15, 2)) @ rot.T
    poly = (poly - poly.min(0)) * (size / (poly.max(0) - poly.min(0)).max())
    return poly + rng.uniform(1, imgsz - 1 - poly.max(0))


def _blob(rng: np.random.Generator) -> np.ndarray:
    """An irregular star-shaped polygon: clutter the size and colour of an object that is no class."""
    n = int(rng.integers(7, 12))
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.35, 1.0, n)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A random colour at least 45 grey levels from the background on average: visible, not always obvious."""
    for _ in range(50):
        c = rng.uniform(0, 255, 3).astype(np.float32)
        if np.abs(c - base).mean() >= 45:
            return c
    return np.where(base > 127, 0.0, 255.0).astype(np.float32)


def _background(rng: np.random.Generator, imgsz: int) -> tuple[np.ndarray, np.ndarray]:
    """Base colour, coarse and fine texture, soft patches and thin lines; returns (float32 image, base colour)."""
    base = (rng.uniform(50, 200) + rng.uniform(-25, 25, 3)).astype(np.float32)
    img = np.empty((imgsz, imgsz, 3), np.float32)
    img[:] = base
    for cells, amp in ((5, 14), (24, 6)):
        noise = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        img += amp * cv2.resize(noise, (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 6))):  # soft patches: large, blurred, half transparent ellipses
        patch = np.zeros((imgsz, imgsz), np.float32)
        centre = tuple(int(v) for v in rng.uniform(0, imgsz, 2))
        axes = tuple(int(v) for v in rng.uniform(0.1, 0.4, 2) * imgsz)
        cv2.ellipse(patch, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        patch = cv2.GaussianBlur(patch, (0, 0), imgsz / 40)[..., None] * rng.uniform(0.2, 0.5)
        img += patch * (rng.uniform(0, 255, 3).astype(np.float32) - img)
    for _ in range(int(rng.integers(3, 11))):  # thin lines
        p0, p1 = (tuple(int(v) for v in rng.uniform(0, imgsz, 2)) for _ in range(2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img, base


def _scene(rng: np.random.Generator, imgsz: int) -> tuple[bytes, list[tuple[int, np.ndarray]]]:
    """One JPEG image and its labels as (class, visible box x0 y0 x1 y1 in pixels).

    Objects and distractor blobs are drawn in random depth order. `owner` holds, per pixel, the index of the item that
    covers more than half of it on top; a new item that would leave an earlier object less than `_MIN_VISIBLE` of its
    pixels is left out, so every label points at a recognisable object.
    """
    img, base = _background(rng, imgsz)
    n_obj, n_blob = int(rng.integers(3, 11)), int(rng.integers(2, 7))
    kinds = rng.permutation([0] * n_obj + [1] * n_blob)  # depth order: 0 an object, 1 a distractor
    owner = np.full((imgsz, imgsz), -1, np.int32)
    items: list[tuple[int, np.ndarray, int]] = []  # (class or -1, polygon, own pixel count)
    for kind in kinds:
        cls = -1 if kind else int(rng.integers(len(NAMES)))
        outline = _blob(rng) if kind else OUTLINES[NAMES[cls]]
        size = imgsz * np.exp(rng.uniform(np.log(0.04), np.log(0.35)))
        poly = _place(rng, outline, size, imgsz)
        roi, alpha = _mask(poly, imgsz)
        inside = alpha > 0.5
        if not inside.any():
            continue
        lost = np.bincount(owner[roi][inside] + 1, minlength=len(items) + 1)[1:]
        visible = np.bincount(owner.ravel() + 1, minlength=len(items) + 1)[1:]
        if any(c >= 0 and v - lo < _MIN_VISIBLE * area for (c, _, area), v, lo in zip(items, visible, lost)):
            continue
        owner[roi][inside] = len(items)
        items.append((cls, poly, int(inside.sum())))
        img[roi] += alpha[..., None] * (_colour(rng, base) - img[roi])
    labels = []
    for i, (cls, poly, _) in enumerate(items):
        if cls < 0:
            continue
        ys, xs = np.nonzero(owner == i)
        lo, hi = poly.min(0), poly.max(0)  # the outline's box, shrunk to the pixels still visible
        box = np.array([max(lo[0], xs.min()), max(lo[1], ys.min()), min(hi[0], xs.max() + 1), min(hi[1], ys.max() + 1)])
        labels.append((cls, box))
    if rng.uniform() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.2))
    img += rng.uniform(2, 8) * rng.standard_normal(img.shape, dtype=np.float32)
    jpeg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])[1]
    return jpeg.tobytes(), labels


def _write_split(root: Path, split: str, n: int, imgsz: int, seed: int) -> None:
    """Images and labels of one split; each image has its own RNG, so any image can be regenerated alone."""
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(n):
        jpeg, objs = _scene(np.random.default_rng([seed, ("train", "val").index(split), i, 7]), imgsz)
        (images / f"{i:06d}.jpg").write_bytes(jpeg)
        lines = []
        for cls, (x0, y0, x1, y1) in objs:
            xywh = np.clip(np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]) / imgsz, 0, 1)
            lines.append(" ".join([str(cls), *(f"{v:.6f}" for v in xywh)]) + "\n")
        (labels / f"{i:06d}.txt").write_text("".join(lines))


def make_hard_dataset(parent: str | Path, spec: HardSet = HardSet()) -> Path:
    """Write the set into `parent/hard-<key>` (once; a complete set is reused) and return its data YAML.

    The folder is named by the parameters, so another size or seed never overwrites this one, and a folder without its
    completion marker (an interrupted generation) is generated again from scratch.
    """
    root = Path(parent).resolve() / f"hard-{spec.key}"
    done = root / "complete.json"
    data = root / "data.yaml"
    if done.is_file() and data.is_file():
        return data
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    for split, n in (("train", spec.n_train), ("val", spec.n_val)):
        _write_split(root, split, n, spec.imgsz, spec.seed)
    names = dict(enumerate(NAMES))
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": names}))
    done.write_text(json.dumps(asdict(spec)))
    from ultralytics.utils import LOGGER

    LOGGER.info(f"{spec.describe()} in {root} ({time.perf_counter() - t:.1f}s)")
    return data


def main() -> None:
    """CLI: generate the set and print the path to pass as `data=` (logs go to stderr)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="parent folder; the set goes to OUT/hard-<key>")
    for name, value in asdict(HardSet()).items():
        if name != "format":
            p.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    a = vars(p.parse_args())
    from ultralytics_slim._cli import stdout_for_result_only

    with stdout_for_result_only():
        path = make_hard_dataset(a.pop("out"), HardSet(**a))
    print(path)


if __name__ == "__main__":
    main()
