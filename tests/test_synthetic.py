"""The built-in synthetic dataset: layout, official .mat structure, readers and evaluator on it, determinism,
atomic generation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from data import synthetic
from data.augment import TrainTransform
from data.synthetic import SyntheticConfig, ensure_builtin_dataset, generate_dataset, subset_masks
from data.wider_eval import evaluate_folder, load_ground_truth, write_prediction_file
from data.widerface import (
    WiderFaceDetection,
    WiderFaceValImages,
    detection_collate,
    list_val_images,
    read_image,
    read_retinaface_labels,
    read_wider_split_txt,
)
from utils.errors import FaceNASError

TINY = SyntheticConfig(num_train=8, num_val=12, min_side=96, max_side=160, seed=7)
REAL_GT = Path("/work/shared/data/widerface_val_gt")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return ensure_builtin_dataset(tmp_path_factory.mktemp("cache"), verbose=False, config=TINY, name="tiny-v1")


def test_layout_and_marker(tiny_root):
    for rel in ("train/label.txt", "val/label.txt", "val/wider_val.txt", "wider_face_split/wider_face_val_bbx_gt.txt",
                "wider_face_split/wider_face_train_bbx_gt.txt", "ground_truth/wider_face_val.mat",
                "ground_truth/wider_easy_val.mat", "ground_truth/wider_medium_val.mat",
                "ground_truth/wider_hard_val.mat", synthetic.MARKER_FILE):
        assert (tiny_root / rel).is_file(), rel
    summary = json.loads((tiny_root / synthetic.MARKER_FILE).read_text())
    assert summary["train_images"] == 8 and summary["val_images"] == 12
    events = {p.name for p in (tiny_root / "train" / "images").iterdir()}
    assert events == {style.name for style in synthetic.EVENTS}
    assert not list(tiny_root.parent.glob(".tiny-v1.tmp-*"))


def test_labels_match_images(tiny_root):
    for split, count in (("train", 8), ("val", 12)):
        records = read_retinaface_labels(tiny_root / split / "label.txt")
        assert len(records) == count
        faces = 0
        for record in records:
            image = read_image(tiny_root / split / "images" / record.path)
            h, w = image.shape[:2]
            assert 96 <= h <= 160 and 96 <= w <= 160
            assert (record.boxes[:, :2] >= 0).all()
            assert (record.boxes[:, 2] <= w).all() and (record.boxes[:, 3] <= h).all()
            assert (record.boxes[:, 2:] > record.boxes[:, :2]).all()
            with_points = record.flags > 0
            points = record.landmarks[with_points].reshape(-1, 5, 2)
            box = record.boxes[with_points]
            assert ((points[..., 0] >= box[:, None, 0] - 1) & (points[..., 0] <= box[:, None, 2] + 1)).all()
            assert ((points[..., 1] >= box[:, None, 1] - 1) & (points[..., 1] <= box[:, None, 3] + 1)).all()
            assert (points[:, 0, 0] < points[:, 1, 0]).all()  # left eye is image-left for these mild rotations
            assert (record.landmarks[~with_points] == -1).all()
            faces += len(record)
        assert faces > count


def test_official_text_matches_label_txt(tiny_root):
    official = read_wider_split_txt(tiny_root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    labels = read_retinaface_labels(tiny_root / "val" / "label.txt")
    assert [r.path for r in official] == [r.path for r in labels]
    for a, b in zip(official, labels):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    listed = (tiny_root / "val" / "wider_val.txt").read_text().split()
    assert listed == [f"/{r.path}" for r in labels]


def test_mat_files_have_the_official_structure(tiny_root):
    gt_dir = tiny_root / "ground_truth"
    mat = scipy.io.loadmat(gt_dir / "wider_face_val.mat")
    for key in ("event_list", "file_list", "face_bbx_list", "blur_label_list", "expression_label_list",
                "illumination_label_list", "invalid_label_list", "occlusion_label_list", "pose_label_list"):
        assert mat[key].dtype == object and mat[key].shape[1] == 1, key
    assert mat["event_list"][0, 0].dtype.kind == "U" and mat["event_list"][0, 0].shape == (1,)
    assert mat["file_list"][0, 0][0, 0].shape == (1,)
    assert mat["face_bbx_list"][0, 0][0, 0].dtype == np.int32 and mat["face_bbx_list"][0, 0][0, 0].shape[1] == 4
    assert mat["blur_label_list"][0, 0][0, 0].dtype == np.uint8
    hard = scipy.io.loadmat(gt_dir / "wider_hard_val.mat")
    assert hard["gt_list"][0, 0][0, 0].dtype == np.uint8 and hard["gt_list"][0, 0][0, 0].shape[1] == 1
    if (REAL_GT / "wider_face_val.mat").is_file():
        real = scipy.io.loadmat(REAL_GT / "wider_hard_val.mat")
        assert sorted(k for k in real if not k.startswith("__")) == sorted(k for k in hard if not k.startswith("__"))
        for key in ("face_bbx_list", "gt_list", "occlusion_label_list"):
            assert real[key][0, 0][0, 0].dtype == hard[key][0, 0][0, 0].dtype
            assert real[key][0, 0][0, 0].ndim == hard[key][0, 0][0, 0].ndim == 2

    gt = load_ground_truth(gt_dir)
    labels = read_retinaface_labels(tiny_root / "val" / "label.txt")
    assert [f"{e}/{n}.jpg" for e, n in zip(gt.events, gt.names)] == [r.path for r in labels]
    assert list_val_images(tiny_root) == list(zip(gt.events, gt.names))
    for i in range(len(gt)):
        easy, medium, hard = gt.keep["easy"][i], gt.keep["medium"][i], gt.keep["hard"][i]
        assert not (easy & ~medium).any() and not (medium & ~hard).any()
    assert gt.face_counts["hard"] > gt.face_counts["easy"]


def test_evaluator_scores_perfect_predictions_on_the_dataset(tiny_root, tmp_path):
    labels = read_retinaface_labels(tiny_root / "val" / "label.txt")
    rng = np.random.default_rng(0)
    for record in labels:
        xywh = np.concatenate([record.boxes[:, :2], record.boxes[:, 2:] - record.boxes[:, :2]], axis=1)
        write_prediction_file(tmp_path, record.event, record.name, xywh, rng.random(len(record)))
    result = evaluate_folder(tmp_path, tiny_root / "ground_truth")
    for setting in ("easy", "medium", "hard"):
        if result["face_counts"][setting]:
            assert result[setting] == pytest.approx(1.0, abs=1e-12)
    images = WiderFaceValImages(tiny_root)
    image, event, name = images[0]
    assert image.dtype == np.uint8 and image.ndim == 3 and (event, name) == list_val_images(tiny_root)[0]


def test_training_dataset_on_builtin_data(tiny_root):
    ds = WiderFaceDetection(tiny_root, "train", TrainTransform(img_size=64), seed=1)
    images, targets = detection_collate([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 64, 64) and targets.shape[0] == 4 and targets.shape[2] == 15
    assert torch.isfinite(images).all() and (targets[..., 14] != 0).sum() >= 1


def test_generation_is_deterministic(tmp_path):
    config = SyntheticConfig(num_train=2, num_val=3, min_side=64, max_side=96, seed=3)
    a = generate_dataset(tmp_path / "a", config)
    b = generate_dataset(tmp_path / "b", config)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.suffix in (".jpg", ".txt", ".json"):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    other = generate_dataset(tmp_path / "c", SyntheticConfig(num_train=2, num_val=3, min_side=64, max_side=96, seed=4))
    assert (other / "val" / "label.txt").read_text() != (a / "val" / "label.txt").read_text()


def test_ensure_reuses_and_reports(tmp_path, capsys):
    config = SyntheticConfig(num_train=1, num_val=2, min_side=64, max_side=80, seed=1)
    root = ensure_builtin_dataset(tmp_path, config=config, name="t-v1")
    err = capsys.readouterr().err
    assert "built-in synthetic dataset" in err and str(root) in err
    stamp = (root / synthetic.MARKER_FILE).stat().st_mtime_ns
    again = ensure_builtin_dataset(tmp_path, config=config, name="t-v1")
    assert again == root and (root / synthetic.MARKER_FILE).stat().st_mtime_ns == stamp
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and "Using the built-in synthetic dataset at" in lines[0]
    ensure_builtin_dataset(tmp_path, verbose=False, config=config, name="t-v1")
    assert capsys.readouterr().err == ""


def test_ensure_uses_facenas_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENAS_CACHE", str(tmp_path / "envcache"))
    config = SyntheticConfig(num_train=0, num_val=1, min_side=64, max_side=64, seed=2)
    root = ensure_builtin_dataset(verbose=False, config=config, name="env-v1")
    assert root == tmp_path / "envcache" / "env-v1" and (root / synthetic.MARKER_FILE).is_file()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    config = SyntheticConfig(num_train=1, num_val=1, min_side=64, max_side=64, seed=1)
    real = synthetic.write_ground_truth

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_ground_truth", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin_dataset(tmp_path, verbose=False, config=config, name="i-v1")
    assert not (tmp_path / "i-v1").exists() and not list(tmp_path.glob(".i-v1.tmp-*"))
    monkeypatch.setattr(synthetic, "write_ground_truth", real)
    root = ensure_builtin_dataset(tmp_path, verbose=False, config=config, name="i-v1")
    assert (root / "ground_truth" / "wider_hard_val.mat").is_file()


def test_incomplete_folder_is_reported_not_used(tmp_path):
    (tmp_path / "x-v1" / "train").mkdir(parents=True)
    with pytest.raises(FaceNASError, match="not a complete"):
        ensure_builtin_dataset(tmp_path, verbose=False, config=TINY, name="x-v1")


def test_subset_rules_are_nested():
    boxes = np.array([[0, 0, 8, 8], [0, 0, 30, 30], [0, 0, 60, 60], [0, 0, 60, 60], [0, 0, 60, 60]], np.float32)
    attributes = np.zeros((5, 6), np.uint8)
    attributes[0, 3] = 1  # invalid (too small)
    attributes[3, 4] = 1  # partly occluded
    attributes[4, 0] = 2  # heavily blurred
    masks = subset_masks(boxes, attributes)
    assert masks["hard"].tolist() == [False, True, True, True, True]
    assert masks["medium"].tolist() == [False, True, True, True, False]
    assert masks["easy"].tolist() == [False, False, True, False, False]
