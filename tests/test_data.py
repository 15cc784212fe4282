"""Tests of the synthetic data generator: determinism, Ultralytics' own checks, geometry of labels, a real training."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("YOLO_OFFLINE", "1")  # before Ultralytics is imported: it checks connectivity once on import

from pathlib import Path

import cv2
import numpy as np
import pytest
from ultralytics.data.utils import check_cls_dataset, check_det_dataset

from ultralytics_slim.data import FLIP_IDX, MARKER, SHAPES, TASKS, make_dataset

SMALL = {"n_train": 12, "n_val": 6, "imgsz": 64}


def _files(root: Path) -> dict[str, bytes]:
    """Every image and label file under root by relative path (the data YAML holds the absolute root, so not it)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in {".png", ".txt"}}


def _rows(txt: Path) -> list[np.ndarray]:
    """The label lines of one file as float arrays (polygon lines differ in length)."""
    return [np.array(line.split(), float) for line in txt.read_text().splitlines()]


def _labels(data: Path, split: str = "*") -> list[tuple[Path, list[np.ndarray]]]:
    """(image, label rows) for every image of a detection-style set."""
    return [
        (img, _rows(data.parent / "labels" / img.parent.name / f"{img.stem}.txt"))
        for img in sorted((data.parent / "images").glob(f"{split}/*.png"))
    ]


@pytest.mark.parametrize("task", TASKS)
def test_deterministic(tmp_path: Path, task: str) -> None:
    a = make_dataset(tmp_path / "a", task, **SMALL, seed=3)
    b = make_dataset(tmp_path / "b", task, **SMALL, seed=3)
    fa, fb = _files(a if a.is_dir() else a.parent), _files(b if b.is_dir() else b.parent)
    assert len(fa) == (18 if task == "classify" else 36)
    assert fa == fb
    c = make_dataset(tmp_path / "c", task, **SMALL, seed=4)
    assert _files(c if c.is_dir() else c.parent) != fa


def test_idempotent_and_regenerates(tmp_path: Path) -> None:
    data = make_dataset(tmp_path, "detect", **SMALL)
    img = tmp_path / "images" / "train" / "000000.png"
    mtime = img.stat().st_mtime_ns
    assert make_dataset(tmp_path, "detect", **SMALL) == data
    assert img.stat().st_mtime_ns == mtime  # not rewritten
    make_dataset(tmp_path, "detect", **{**SMALL, "n_train": 5})  # other parameters: replaced, no stale files
    assert len(list((tmp_path / "images" / "train").iterdir())) == 5
    assert make_dataset(tmp_path, "classify", **SMALL) == tmp_path.resolve()  # other task in the same folder
    assert not (tmp_path / "images").exists() and (tmp_path / MARKER).is_file()


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileExistsError):
        make_dataset(tmp_path, "detect", **SMALL)


BAD = [{"task": "depth"}, {"nc": 0}, {"nc": len(SHAPES) + 1}, {"imgsz": 16}, {"n_val": 0}]
BAD.append({"task": "classify", "n_val": 2, "nc": 3})  # a classify split needs an image of every class


@pytest.mark.parametrize("kwargs", BAD)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_dataset(tmp_path, **{**SMALL, **kwargs})


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_ultralytics_accepts_detection_sets(tmp_path: Path, task: str) -> None:
    data = check_det_dataset(make_dataset(tmp_path, task, **SMALL, nc=5))
    assert data["nc"] == 5 and data["names"] == dict(enumerate(SHAPES[:5]))
    assert Path(data["train"]) == tmp_path.resolve() / "images" / "train"
    if task == "pose":
        assert data["kpt_shape"] == [4, 3] and data["flip_idx"] == FLIP_IDX


def test_ultralytics_accepts_classify_set(tmp_path: Path) -> None:
    data = check_cls_dataset(make_dataset(tmp_path, "classify", **SMALL, nc=4))
    assert data["nc"] == 4 and sorted(data["names"].values()) == sorted(SHAPES[:4])
    for split in ("train", "val"):
        counts = [len(list((data[split] / name).glob("*.png"))) for name in SHAPES[:4]]
        assert max(counts) - min(counts) <= 1  # balanced
    img = cv2.imread(str(next((data["val"] / SHAPES[0]).glob("*.png"))))
    assert img.shape == (64, 64, 3)


def _boxes(rows: list[np.ndarray]) -> np.ndarray:
    """x0, y0, x1, y1 from cls cx cy w h ... rows."""
    cx, cy, w, h = np.array([r[1:5] for r in rows]).T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def _disjoint(boxes: np.ndarray) -> bool:
    """No two boxes overlap."""
    pairs = ((a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    return all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1] for a, b in pairs)


def test_detect_labels_in_range_and_varied(tmp_path: Path) -> None:
    labels = _labels(make_dataset(tmp_path, "detect", n_train=40, n_val=10, imgsz=96, nc=8))
    assert len(labels) == 50
    counts = [len(rows) for _, rows in labels]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    assert {int(r[0]) for _, rows in labels for r in rows} == set(range(8))
    sides = []
    for img, rows in labels:
        assert cv2.imread(str(img)).shape == (96, 96, 3)
        assert all(len(r) == 5 for r in rows)
        boxes = _boxes(rows)
        assert (boxes >= 0).all() and (boxes <= 1).all() and _disjoint(boxes)
        sides += [max(r[3], r[4]) for r in rows]
    assert min(sides) >= 0.099 and max(sides) <= 0.451  # longer box side is 10-45% of the image


def test_pixels_match_polygons(tmp_path: Path) -> None:
    """Pixels wholly inside each outline have the shape's colour and pixels wholly outside, next to it, do not.

    With the next test (polygon extents are the boxes) this makes every box tight to the drawn shape within a pixel.
    """
    size = 128
    for img_path, rows in _labels(make_dataset(tmp_path, "segment", n_train=30, n_val=1, imgsz=size, nc=8), "train"):
        img = cv2.imread(str(img_path)).astype(np.float32)
        for row in rows:
            poly = row[1:].reshape(-1, 2) * size
            x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 2, 0)
            x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 2, size)
            contour = poly.astype(np.float32).reshape(-1, 1, 2)
            centres = [(x + 0.5, y + 0.5) for y in range(y0, y1) for x in range(x0, x1)]  # of the pixels around it
            dist = np.array([cv2.pointPolygonTest(contour, c, True) for c in centres]).reshape(y1 - y0, x1 - x0)
            patch = img[y0:y1, x0:x1]
            # signed distance to the outline, > 0 inside; other shapes are at least 2 px away
            inside, outside = dist > 0.75, (dist < -0.75) & (dist > -1.25)
            colour = np.median(patch[inside], 0)
            like = np.abs(patch - colour).mean(2) < 30  # shape colours differ from the background by 100 or more
            assert like[inside].all() and not like[outside].any()


def test_segment_polygons_match_boxes(tmp_path: Path) -> None:
    seg = _labels(make_dataset(tmp_path / "seg", "segment", n_train=30, n_val=10, imgsz=96, nc=8))
    det = _labels(make_dataset(tmp_path / "det", "detect", n_train=30, n_val=10, imgsz=96, nc=8))
    for (seg_img, seg_rows), (det_img, det_rows) in zip(seg, det):  # one seed: the same images and objects
        assert seg_img.read_bytes() == det_img.read_bytes() and len(seg_rows) == len(det_rows)
        for line, det_line, box in zip(seg_rows, det_rows, _boxes(det_rows)):
            pts = line[1:].reshape(-1, 2)
            assert line[0] == det_line[0] and len(pts) >= 3 and (pts >= 0).all() and (pts <= 1).all()
            np.testing.assert_allclose(np.r_[pts.min(0), pts.max(0)], box, atol=2e-6)  # the box is the polygon's


def test_pose_keypoints_on_box_edges(tmp_path: Path) -> None:
    tol = 2e-6
    for _, rows in _labels(make_dataset(tmp_path, "pose", n_train=30, n_val=10, imgsz=96)):
        assert all(len(r) == 5 + 4 * 3 for r in rows)
        kpts = np.array([r[5:] for r in rows]).reshape(-1, 4, 3)
        assert (kpts[..., 2] == 2).all() and (kpts[..., :2] >= 0).all() and (kpts[..., :2] <= 1).all()
        x0, y0, x1, y1 = _boxes(rows).T
        np.testing.assert_allclose(kpts[:, 0, 1], y0, atol=tol)  # top
        np.testing.assert_allclose(kpts[:, 1, 0], x1, atol=tol)  # right
        np.testing.assert_allclose(kpts[:, 2, 1], y1, atol=tol)  # bottom
        np.testing.assert_allclose(kpts[:, 3, 0], x0, atol=tol)  # left
        assert (kpts[..., 0] >= x0[:, None] - tol).all() and (kpts[..., 0] <= x1[:, None] + tol).all()
        assert (kpts[..., 1] >= y0[:, None] - tol).all() and (kpts[..., 1] <= y1[:, None] + tol).all()


def test_obb_labels_are_elongated_rectangles(tmp_path: Path) -> None:
    for _, rows in _labels(make_dataset(tmp_path, "obb", n_train=30, n_val=10, imgsz=96)):
        assert all(len(r) == 9 for r in rows)
        for r in rows:
            corners = r[1:].reshape(4, 2)
            assert (corners >= 0).all() and (corners <= 1).all()
            sides = np.roll(corners, -1, 0) - corners
            np.testing.assert_allclose((sides * np.roll(sides, -1, 0)).sum(1), 0, atol=1e-4)  # right angles
            lengths = np.linalg.norm(sides, axis=1)
            assert lengths.max() / lengths.min() > 1.3  # elongated, so the angle is defined


def test_cli(tmp_path: Path) -> None:
    """Stdout holds the path alone, so `data=$(python -m ultralytics_slim.data ...)` works; logs go to stderr."""
    args = ["--task", "obb", "--out", str(tmp_path / "o"), "--n-train", "4", "--n-val", "2", "--imgsz", "48"]
    r = subprocess.run(
        [sys.executable, "-m", "ultralytics_slim.data", *args], capture_output=True, text=True, check=True
    )
    assert r.stdout == f"{(tmp_path / 'o' / 'data.yaml').resolve()}\n"
    assert "Synthetic obb set" in r.stderr
    assert len(list((tmp_path / "o" / "images" / "train").glob("*.png"))) == 4


def test_detect_trains_one_epoch(tmp_path: Path) -> None:
    from ultralytics import YOLO

    data = make_dataset(tmp_path / "data", "detect", n_train=16, n_val=8, imgsz=64)
    YOLO("yolov8n.yaml").train(
        data=str(data),
        epochs=1,
        imgsz=64,
        batch=8,
        workers=0,
        plots=False,
        val=True,
        device="cpu",
        project=str(tmp_path),
        name="t",
        exist_ok=True,
    )
    assert (tmp_path / "t" / "weights" / "last.pt").is_file()
