"""Readers of the official and RetinaFace annotation formats, image loading, Datasets and collate."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.augment import TrainTransform, ValTransform
from data.widerface import (
    ImageAnnotation,
    WiderFaceDetection,
    WiderFaceValImages,
    detection_collate,
    format_retinaface_labels,
    format_wider_split_txt,
    list_val_images,
    read_image,
    read_retinaface_labels,
    read_wider_split_txt,
)
from utils.errors import FaceNASError

# The official files end face lines with a space; keep that here.
OFFICIAL = "\n".join([
    "0--Parade/0_Parade_marchingband_1_465.jpg",
    "2",
    "345 211 4 4 2 0 0 0 2 0 ",
    "331 126 30 40 0 1 0 1 0 1 ",
    "0--Parade/0_Parade_Parade_0_1014.jpg",
    "0",
    "0 0 0 0 0 0 0 0 0 0 ",
    "1--Handshaking/1_Handshaking_Handshaking_1_134.jpg",
    "1",
    "10 20 30 50 1 0 1 0 0 0",
]) + "\n"

LABELS = """# 0--Parade/0_Parade_marchingband_1_849.jpg
449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.321 425.893 0.0 538.711 431.696 0.0 0.82
10 10 5 6 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0
# 0--Parade/empty.jpg
# 1--Handshaking/val_style.jpg 1024 768
7 8 9 10
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, line: int, fragment: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}:"), message
    assert fragment in message, message


# ----------------------------------------------------------------------------------------------- official format


def test_official_reader_parses_boxes_attributes_and_zero_face_quirk(tmp_path):
    records = read_wider_split_txt(write(tmp_path, "gt.txt", OFFICIAL))
    assert [r.path for r in records] == ["0--Parade/0_Parade_marchingband_1_465.jpg",
                                        "0--Parade/0_Parade_Parade_0_1014.jpg",
                                        "1--Handshaking/1_Handshaking_Handshaking_1_134.jpg"]
    first = records[0]
    np.testing.assert_array_equal(first.boxes, [[345, 211, 349, 215], [331, 126, 361, 166]])
    assert first.boxes.dtype == np.float32 and first.landmarks.shape == (2, 10)
    np.testing.assert_array_equal(first.attributes, [[2, 0, 0, 0, 2, 0], [0, 1, 0, 1, 0, 1]])
    assert (first.flags == -1).all() and (first.landmarks == -1).all()
    assert len(records[1]) == 0 and records[1].boxes.shape == (0, 4)
    assert records[2].event == "1--Handshaking" and records[2].name == "1_Handshaking_Handshaking_1_134"


def test_official_reader_accepts_zero_count_without_zero_line(tmp_path):
    text = "a/x.jpg\n0\nb/y.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n"
    records = read_wider_split_txt(write(tmp_path, "gt.txt", text))
    assert [len(r) for r in records] == [0, 1]


def test_official_writer_round_trips(tmp_path):
    records = read_wider_split_txt(write(tmp_path, "gt.txt", OFFICIAL))
    again = read_wider_split_txt(write(tmp_path, "again.txt", format_wider_split_txt(records)))
    for a, b in zip(records, again):
        assert a.path == b.path
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.attributes, b.attributes)


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("a/x.jpg\nthree\n1 2 3 4 0 0 0 0 0 0\n", 2, "bad face count 'three'"),
    ("a/x.jpg\n-1\n", 2, "bad face count '-1'"),
    ("a/x.jpg\n1\n1 2 3 4 0 0 0 0 0\n", 3, "expected 10 fields"),
    ("a/x.jpg\n1\n1 2 3 4 0 0 0 0 0 0 0\n", 3, "expected 10 fields"),
    ("a/x.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n5 6 7 q 0 0 0 0 0 0\n", 4, "'q' is not a number"),
    ("a/x.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n5 6 7 8 0 0 0 0 0 0\n", 5, "after 2 of 3 box lines"),
    ("a/x.jpg\n2\n1 2 3 4 0 0 0 0 0 0\nb/y.jpg\n0\n", 4, "found an image path after 1 of 2"),
    ("a/x.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n5 6 7 8 0 0 0 0 0 0\n", 4, "expected an image path"),
    ("a/x.jpg\n1\n1 2 -3 4 0 0 0 0 0 0\n", 3, "negative box width"),
    ("a/x.jpg\n", 2, "expected its face count"),
])
def test_official_reader_rejects_malformed_files(tmp_path, text, line, fragment):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(FaceNASError) as excinfo:
        read_wider_split_txt(path)
    assert_one_line_error(excinfo, path, line, fragment)


def test_missing_annotation_file_is_a_user_error(tmp_path):
    with pytest.raises(FaceNASError, match="not found"):
        read_wider_split_txt(tmp_path / "nope.txt")
    with pytest.raises(FaceNASError, match="not found"):
        read_retinaface_labels(tmp_path / "nope.txt")


# ------------------------------------------------------------------------------------------------ RetinaFace label.txt


def test_retinaface_reader_landmarks_flags_and_val_form(tmp_path):
    records = read_retinaface_labels(write(tmp_path, "label.txt", LABELS))
    assert [len(r) for r in records] == [2, 0, 1]
    first = records[0]
    np.testing.assert_allclose(first.boxes, [[449, 330, 571, 479], [10, 10, 15, 16]])
    np.testing.assert_allclose(first.landmarks[0], [488.906, 373.643, 542.089, 376.442, 515.031, 412.83, 485.321,
                                                    425.893, 538.711, 431.696], rtol=1e-6)
    np.testing.assert_array_equal(first.flags, [1, -1])
    assert (first.landmarks[1] == -1).all()
    assert first.attributes is None
    assert records[2].path == "1--Handshaking/val_style.jpg"
    np.testing.assert_array_equal(records[2].boxes, [[7, 8, 16, 18]])
    assert records[2].flags.tolist() == [-1] and (records[2].landmarks == -1).all()


def test_retinaface_writer_round_trips(tmp_path):
    records = read_retinaface_labels(write(tmp_path, "label.txt", LABELS))
    again = read_retinaface_labels(write(tmp_path, "again.txt", format_retinaface_labels(records)))
    for a, b in zip(records, again):
        assert a.path == b.path
        np.testing.assert_allclose(a.boxes, b.boxes)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
        np.testing.assert_array_equal(a.flags, b.flags)


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("# a/x.jpg\n1 2 3 4 5 6 7\n", 2, "expected 4 numbers"),
    ("1 2 3 4\n# a/x.jpg\n", 1, "before the first '# path' line"),
    ("# a/x.jpg\n1 2 3 4\n1 2 3 x\n", 3, "'x' is not a number"),
    ("# a/x.jpg\n1 2 3 nan\n", 2, "not a finite number"),
    ("# a/x.jpg extra\n", 1, "expected '# relative/path.jpg'"),
    ("# a/x.jpg\n\n1 2 -3 4\n", 3, "negative box width"),
])
def test_retinaface_reader_rejects_malformed_files(tmp_path, text, line, fragment):
    path = write(tmp_path, "label.txt", text)
    with pytest.raises(FaceNASError) as excinfo:
        read_retinaface_labels(path)
    assert_one_line_error(excinfo, path, line, fragment)


# --------------------------------------------------------------------------------------------------------- images


def test_read_image_errors_name_the_path(tmp_path):
    with pytest.raises(FaceNASError) as excinfo:
        read_image(tmp_path / "missing.jpg")
    assert str(tmp_path / "missing.jpg") in str(excinfo.value)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(FaceNASError, match="broken.jpg: not a readable image"):
        read_image(broken)


def make_root(tmp_path: Path, split: str, sizes: list[tuple[int, int]], records: list[ImageAnnotation]) -> Path:
    root = tmp_path / "root"
    for (w, h), record in zip(sizes, records):
        path = root / split / "images" / record.path
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.full((h, w, 3), 90, np.uint8)
        for box in record.boxes.astype(int):
            cv2.rectangle(image, tuple(box[:2]), tuple(box[2:]), (200, 180, 160), -1)
        cv2.imwrite(str(path), image)
    (root / split / "label.txt").write_text(format_retinaface_labels(records))
    return root


def face(x1, y1, x2, y2, with_points=True) -> tuple[np.ndarray, np.ndarray, int]:
    w, h = x2 - x1, y2 - y1
    points = np.array([x1 + 0.3 * w, y1 + 0.4 * h, x1 + 0.7 * w, y1 + 0.4 * h, x1 + 0.5 * w, y1 + 0.6 * h,
                       x1 + 0.35 * w, y1 + 0.8 * h, x1 + 0.65 * w, y1 + 0.8 * h], np.float32)
    return np.array([x1, y1, x2, y2], np.float32), points if with_points else np.full(10, -1, np.float32), (
        1 if with_points else -1)


def annotation(path: str, faces: list) -> ImageAnnotation:
    if not faces:
        return ImageAnnotation(path, np.zeros((0, 4), np.float32), np.zeros((0, 10), np.float32), np.zeros(0, np.int64))
    return ImageAnnotation(path, np.stack([f[0] for f in faces]), np.stack([f[1] for f in faces]),
                           np.array([f[2] for f in faces], np.int64))


@pytest.fixture
def small_root(tmp_path) -> Path:
    records = [
        annotation("ev/a.jpg", [face(20, 30, 80, 100), face(120, 40, 150, 80, with_points=False)]),
        annotation("ev/b.jpg", []),
        annotation("ev/c.jpg", [face(10, 10, 60, 70)]),
        annotation("ev/d.jpg", [face(40, 40, 120, 120), face(5, 5, 30, 35), face(100, 10, 140, 50)]),
    ]
    return make_root(tmp_path, "train", [(200, 160), (120, 120), (100, 140), (180, 180)], records)


def test_dataset_items_are_normalised_and_deterministic(small_root):
    ds = WiderFaceDetection(small_root, "train", TrainTransform(img_size=96), seed=5)
    assert len(ds) == 4
    image, target = ds[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert target.dtype == np.float32 and target.shape[1] == 15 and len(target) >= 1
    assert (target[:, :4] >= 0).all() and (target[:, :4] <= 1).all()
    assert set(np.unique(target[:, 14])) <= {1.0, -1.0}
    image2, target2 = ds[0]
    assert torch.equal(image, image2) and np.array_equal(target, target2)
    epoch0 = [ds[i] for i in range(4)]
    ds.set_epoch(1)
    epoch1 = [ds[i] for i in range(4)]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch1))
    ds.set_epoch(0)
    assert all(torch.equal(a[0], ds[i][0]) for i, a in enumerate(epoch0))
    assert ds[1][1].shape == (0, 15)


def test_dataset_stream_independent_of_worker_count(small_root):
    ds = WiderFaceDetection(small_root, "train", TrainTransform(img_size=64), seed=11)
    ds.set_epoch(3)
    runs = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers,
                                             collate_fn=detection_collate)
        runs.append(list(loader))
    for (img_a, tgt_a), (img_b, tgt_b) in zip(*runs):
        assert torch.equal(img_a, img_b) and torch.equal(tgt_a, tgt_b)


def test_detection_collate_pads_with_flag_zero():
    a = (torch.zeros(3, 8, 8), np.array([[0.1, 0.1, 0.5, 0.5] + [0.2] * 10 + [1.0],
                                         [0.2, 0.2, 0.4, 0.4] + [-1.0] * 10 + [-1.0]], np.float32))
    b = (torch.ones(3, 8, 8), np.zeros((0, 15), np.float32))
    images, targets = detection_collate([a, b])
    assert images.shape == (2, 3, 8, 8) and targets.shape == (2, 2, 15)
    mask = targets[..., 14] != 0
    assert mask.tolist() == [[True, True], [False, False]]
    assert torch.equal(targets[0], torch.from_numpy(a[1]))
    assert (targets[1] == 0).all()
    _, empty = detection_collate([b, b])
    assert empty.shape == (2, 0, 15)


def test_dataset_reports_missing_layout(tmp_path):
    with pytest.raises(FaceNASError, match="label.txt"):
        WiderFaceDetection(tmp_path, "train")


def test_val_images_follow_wider_val_list_then_label_txt(tmp_path):
    records = [annotation("e1/z.jpg", [face(5, 5, 40, 40)]), annotation("e0/a.jpg", [])]
    root = make_root(tmp_path, "val", [(64, 48), (50, 60)], records)
    assert list_val_images(root) == [("e1", "z"), ("e0", "a")]  # label.txt order
    (root / "val" / "wider_val.txt").write_text("/e0/a.jpg\n/e1/z.jpg\n")
    assert list_val_images(root) == [("e0", "a"), ("e1", "z")]  # wider_val.txt wins over label.txt
    items = list(WiderFaceValImages(root))
    assert [(e, n) for _, e, n in items] == [("e0", "a"), ("e1", "z")]
    assert items[0][0].dtype == np.uint8 and items[0][0].shape == (60, 50, 3)
    with pytest.raises(FaceNASError, match="wider_face_val.mat"):
        list_val_images(root, gt_dir=tmp_path / "no_gt_here")


def test_val_transform_dataset_split(tmp_path):
    records = [annotation("e/a.jpg", [face(10, 20, 50, 60)])]
    root = make_root(tmp_path, "val", [(100, 80)], records)
    ds = WiderFaceDetection(root, "val", ValTransform(img_size=32, mirror=False))
    image, target = ds[0]
    assert image.shape == (3, 32, 32)
    np.testing.assert_allclose(target[0, :4], [0.1, 0.25, 0.5, 0.75], rtol=1e-6)
