"""Deterministic synthetic shape data sets in Ultralytics format, for every YOLO task.

Nothing can be downloaded in offline environments, so tests, examples and benchmarks train on small sets generated
here. Each image holds coloured geometric shapes on a mildly noisy textured background; the class is the shape kind and
the colour is random, so a model must learn the shape. Objects never overlap, so every label (box, polygon, keypoints,
rotated box) describes exactly what is drawn and a YOLOv8n trained from scratch learns the set in tens of epochs.

    python -m ultralytics_slim.data --task detect --out datasets/shapes   # prints the path to pass as `data=`
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from ultralytics_slim._cli import stdout_for_result_only

TASKS = ("detect", "segment", "pose", "obb", "classify")
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "arrow", "crescent")
FLIP_IDX = [0, 3, 2, 1]  # keypoints are the top, right, bottom and left extreme points: a left-right flip swaps 1 and 3
MARKER = ".slim_dataset.json"  # parameters of the set in this folder; its presence means this module owns the folder
_FORMAT = 1  # bump when the drawing or label format changes, so stale sets are regenerated
_OWNED = ("images", "labels", "train", "val", "data.yaml")  # what a regeneration may delete under root
_SPLITS = ("train", "val")
_SS = 8  # supersampling factor of the shape masks


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int) -> np.ndarray:
    """Points on a circle from angle a0 to a1 (degrees), both ends included."""
    a = np.deg2rad(np.linspace(a0, a1, n))
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _outlines() -> dict[str, np.ndarray]:
    """Unit outlines (x right, y down) of every shape kind as simple polygons; circles are 48-gons."""
    star = np.deg2rad(np.arange(10) * 36 - 90)
    star_r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    w = 0.33  # half width of a cross arm
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    heart = np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))])
    # crescent: outer unit circle minus a circle of radius 0.8 centred at (0.45, 0); they meet at angle ±51.3 deg
    a = np.rad2deg(np.arctan2(0.78, 0.625))
    b = np.rad2deg(np.arctan2(0.78, 0.175))
    return {
        "circle": _arc(0, 0, 1, 0, 360, 49)[:-1],
        "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float),
        "triangle": _arc(0, 0, 1, -90, 270, 4)[:-1],
        "star": np.stack([star_r * np.cos(star), star_r * np.sin(star)], 1),
        "cross": np.array(
            [[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]]
        ),
        "heart": heart.T / 17,
        "arrow": np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.6], [1, 0], [0.2, 0.6], [0.2, 0.25], [-1, 0.25]]),
        "crescent": np.concatenate([_arc(0, 0, 1, a, 360 - a, 25), _arc(0.45, 0, 0.8, 360 - b, b, 25)[1:-1]]),
    }


_OUTLINES = _outlines()


@dataclass
class _Obj:
    """One drawn shape in pixel coordinates: its class, outline polygon and (for obb) rotated-box corners."""

    cls: int
    poly: np.ndarray  # (n, 2) outline, continuous pixel coordinates (pixel i spans [i, i + 1])
    corners: np.ndarray  # (4, 2) corners of the shape's own bounding rectangle, rotated with it

    def box(self) -> np.ndarray:
        """Tight axis-aligned box x0, y0, x1, y1 of the outline."""
        return np.concatenate([self.poly.min(0), self.poly.max(0)])


def _shape(rng: np.random.Generator, cls: int, size: float, stretch: bool) -> _Obj:
    """A shape of class `cls` with random rotation whose box has `size` pixels on its longer side, centred at 0.

    Rotation stays within +-20 degrees, which kept a from-scratch YOLOv8n learning the set in 15 epochs; with `stretch`
    (obb) the shape is instead elongated 1.4-2.5x and turned to any angle, so its orientation is visible and its
    rotated box unambiguous.
    """
    local = _OUTLINES[SHAPES[cls]] * [rng.uniform(1.4, 2.5) if stretch else 1.0, 1.0]
    lo, hi = local.min(0), local.max(0)
    rect = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    a = rng.uniform(0, 2 * np.pi) if stretch else rng.uniform(-1, 1) * np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    poly, corners = local @ rot.T, rect @ rot.T
    ext = corners if stretch else poly  # what must fit inside the image
    k = size / (ext.max(0) - ext.min(0)).max()
    mid = (ext.max(0) + ext.min(0)) / 2
    return _Obj(cls, (poly - mid) * k, (corners - mid) * k)


def _background(rng: np.random.Generator, imgsz: int) -> tuple[np.ndarray, np.ndarray]:
    """A low-saturation base colour with a smooth random texture, returned as (float32 image, base colour)."""
    base = (rng.uniform(60, 190) + rng.uniform(-20, 20, 3)).astype(np.float32)
    texture = cv2.resize(rng.normal(0, 1, (5, 5, 3)).astype(np.float32), (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    return base + 10 * texture, base


def _colour(rng: np.random.Generator, base: np.ndarray) -> tuple[float, float, float]:
    """A random colour far enough from the background that the shape edge is always visible."""
    for _ in range(50):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - base).mean() >= 100:
            break
    else:
        c = np.where(base > 127, 0.0, 255.0)
    return tuple(float(x) for x in c)


def _finish(img: np.ndarray, rng: np.random.Generator) -> bytes:
    """Add mild pixel noise in place and encode as PNG: lossless, so pixels stay exact and reproducible."""
    img += 3 * rng.standard_normal(img.shape, dtype=np.float32)
    return cv2.imencode(".png", np.clip(img, 0, 255, out=img).astype(np.uint8))[1].tobytes()


def _draw(img: np.ndarray, poly: np.ndarray, colour: tuple[float, float, float]) -> None:
    """Blend a filled polygon into `img` by its pixel coverage, from an 8x supersampled mask of its box.

    OpenCV's anti-aliased fill spills about 0.7 px past the outline; exact coverage keeps boxes tight to the pixel.
    """
    x0, y0 = np.floor(poly.min(0)).astype(int)
    x1, y1 = np.ceil(poly.max(0)).astype(int)
    mask = np.zeros(((y1 - y0) * _SS, (x1 - x0) * _SS), np.uint8)
    # sub-pixel j spans [j, j + 1) and OpenCV fills the sub-pixels whose centre j + 0.5 is inside
    cv2.fillPoly(mask, [np.round(((poly - [x0, y0]) * _SS - 0.5) * 16).astype(np.int32)], 255, shift=4)
    alpha = cv2.resize(mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)[..., None] * np.float32(1 / 255)
    roi = img[y0:y1, x0:x1]
    roi += alpha * (np.asarray(colour, np.float32) - roi)


def _scene(rng: np.random.Generator, imgsz: int, nc: int, stretch: bool) -> tuple[bytes, list[_Obj]]:
    """An image with 1-4 non-overlapping shapes whose box side is 10-45% of the image, and the shapes drawn.

    Sizes lean to the large end (10% + 35% * sqrt(u)): small objects are what a briefly trained model misses most.
    Shapes keep a 2 px gap, and for obb their whole rotated boxes do, so no label covers another object's pixels.
    """
    img, base = _background(rng, imgsz)
    objs: list[_Obj] = []
    taken: list[np.ndarray] = []  # x0, y0, x1, y1 of what each placed object occupies
    for _ in range(int(rng.integers(1, 5))):
        obj = _shape(rng, int(rng.integers(nc)), (0.10 + 0.35 * np.sqrt(rng.uniform())) * imgsz, stretch)
        ext = obj.corners if stretch else obj.poly
        lo, hi = ext.min(0), ext.max(0)
        for _ in range(20):  # rejection-sample a free position; a shape that finds none is left out
            c = rng.uniform(1 - lo, imgsz - 1 - hi)
            x0, y0, x1, y1 = box = np.concatenate([lo + c, hi + c])
            if all(x0 > b[2] + 2 or x1 < b[0] - 2 or y0 > b[3] + 2 or y1 < b[1] - 2 for b in taken):
                objs.append(_Obj(obj.cls, obj.poly + c, obj.corners + c))
                taken.append(box)
                break
    for obj in objs:
        _draw(img, obj.poly, _colour(rng, base))
    return _finish(img, rng), objs


def _keypoints(poly: np.ndarray) -> np.ndarray:
    """Top, right, bottom and left extreme points of the outline.

    Along a (nearly) flat extreme edge the point is the mean of the vertices within 2% of the shape size, so the label
    is the edge middle rather than an arbitrary corner the model could not tell apart.
    """
    lo, hi = poly.min(0), poly.max(0)
    tol = 0.02 * (hi - lo).max()
    x, y = poly[:, 0], poly[:, 1]
    return np.array(
        [
            [x[y <= lo[1] + tol].mean(), lo[1]],
            [hi[0], y[x >= hi[0] - tol].mean()],
            [x[y >= hi[1] - tol].mean(), hi[1]],
            [lo[0], y[x <= lo[0] + tol].mean()],
        ]
    )


def _label(obj: _Obj, task: str, imgsz: int) -> str:
    """One label line in the Ultralytics format of `task`, coordinates normalised to [0, 1]."""
    if task == "segment":
        return _line(obj.cls, obj.poly.ravel() / imgsz)
    if task == "obb":
        return _line(obj.cls, obj.corners.ravel() / imgsz)
    x0, y0, x1, y1 = obj.box() / imgsz
    line = _line(obj.cls, np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]))
    if task == "pose":  # x y visibility per keypoint, all visible
        line += "".join(f" {x:.6f} {y:.6f} 2" for x, y in np.clip(_keypoints(obj.poly) / imgsz, 0, 1))
    return line


def _line(cls: int, coords: np.ndarray) -> str:
    """`cls` then coordinates with 6 decimals, clipped against rounding just past the image edge."""
    return " ".join([str(cls), *(f"{v:.6f}" for v in np.clip(coords, 0, 1))])


def _classify_image(rng: np.random.Generator, cls: int, imgsz: int) -> bytes:
    """One shape of class `cls` near the centre, its box side 40-80% of the image."""
    img, base = _background(rng, imgsz)
    obj = _shape(rng, cls, rng.uniform(0.4, 0.8) * imgsz, False)
    _draw(img, obj.poly + imgsz / 2 + rng.uniform(-0.05, 0.05, 2) * imgsz, _colour(rng, base))
    return _finish(img, rng)


def _write_split(root: Path, task: str, split: str, n: int, imgsz: int, nc: int, seed: int) -> None:
    """Write the images (and labels) of one split; each image has its own RNG, so sets are reproducible per image."""
    s = _SPLITS.index(split)
    if task == "classify":
        for name in SHAPES[:nc]:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cls = i % nc  # balanced classes
            png = _classify_image(np.random.default_rng([seed, s, i, 1]), cls, imgsz)
            (root / split / SHAPES[cls] / f"{i:06d}.png").write_bytes(png)
        return
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # detect, segment and pose share one stream, so for one seed they draw the same images
        png, objs = _scene(np.random.default_rng([seed, s, i, int(task == "obb")]), imgsz, nc, task == "obb")
        (images / f"{i:06d}.png").write_bytes(png)
        (labels / f"{i:06d}.txt").write_text("".join(_label(o, task, imgsz) + "\n" for o in objs))


def _yaml(root: Path, task: str, nc: int) -> dict:
    """The data YAML of a detection-style task."""
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(SHAPES[:nc]))}
    if task == "pose":
        kpt_names = {i: ["top", "right", "bottom", "left"] for i in range(nc)}
        data |= {"kpt_shape": [4, 3], "flip_idx": FLIP_IDX, "kpt_names": kpt_names}
    return data


def make_dataset(
    root: str | Path,
    task: str = "detect",
    *,
    n_train: int = 200,
    n_val: int = 50,
    imgsz: int = 160,
    nc: int = 3,
    seed: int = 0,
) -> Path:
    """Write a synthetic shape set for `task` under `root` and return what to pass as `data=`.

    That is `root/data.yaml` for detect, segment, pose and obb, and `root` itself for classify. The same arguments give
    byte-identical PNG images and label files. A complete set with the same parameters is returned as is; one made by
    this function with other parameters is replaced, and a folder holding foreign data in the same places is refused.
    Classes are the first `nc` of `SHAPES`.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if not 1 <= nc <= len(SHAPES):
        raise ValueError(f"nc must be in 1..{len(SHAPES)}, not {nc}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be at least 32, not {imgsz}")
    least = nc if task == "classify" else 1  # a classify split needs an image of every class
    if n_train < least or n_val < least:
        raise ValueError(f"n_train and n_val must be at least {least} for task={task!r}, not {n_train} and {n_val}")
    root = Path(root).resolve()
    out = root if task == "classify" else root / "data.yaml"
    params = {
        "format": _FORMAT,
        "task": task,
        "n_train": n_train,
        "n_val": n_val,
        "imgsz": imgsz,
        "nc": nc,
        "seed": seed,
    }
    marker = root / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == {**params, "complete": True} and out.exists():
            return out
        for name in _OWNED:  # ours, from other parameters or an interrupted run
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    elif any((root / name).exists() for name in _OWNED):
        raise FileExistsError(f"{root} holds data not made by make_dataset(); pass an empty or new folder")
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({**params, "complete": False}))
    t = time.perf_counter()
    for split, n in zip(_SPLITS, (n_train, n_val)):
        _write_split(root, task, split, n, imgsz, nc, seed)
    if task != "classify":
        out.write_text(yaml.safe_dump(_yaml(root, task, nc), sort_keys=False))
    marker.write_text(json.dumps({**params, "complete": True}))
    from ultralytics.utils import LOGGER  # not at the top, so the CLI can import Ultralytics away from stdout

    LOGGER.info(
        f"Synthetic {task} set: {n_train} train + {n_val} val images at {imgsz}px, {nc} classes, in {root} "
        f"({time.perf_counter() - t:.1f}s)"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: generate a set and print the path to pass as `data=` on stdout, alone; logs go to stderr."""
    p = argparse.ArgumentParser(prog="python -m ultralytics_slim.data", description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, default="detect")
    p.add_argument("--out", required=True, help="folder to write the set into; data= is OUT/data.yaml (classify: OUT)")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-val", type=int, default=50)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--nc", type=int, default=3, help=f"number of classes, the first of {', '.join(SHAPES)}")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    with stdout_for_result_only():
        path = make_dataset(a.out, a.task, n_train=a.n_train, n_val=a.n_val, imgsz=a.imgsz, nc=a.nc, seed=a.seed)
    print(path)


if __name__ == "__main__":
    main()
