"""Training / validation transforms: geometry follows the image, mirror swaps sides, determinism, crop rules."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.augment import (
    BGR_MEAN,
    TrainTransform,
    ValTransform,
    make_target,
    mirror,
    photometric_distort,
    random_crop,
)

MEAN = np.array(BGR_MEAN, np.float32)


def face_image(width: int = 400, height: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A grey image with two drawn faces: a large one with landmarks (white left eye, black right eye) and a small
    one without landmarks."""
    image = np.full((height, width, 3), 128, np.uint8)
    cv2.ellipse(image, (180, 160), (70, 90), 0, 0, 360, (120, 150, 200), -1)
    left_eye, right_eye = (150, 135), (210, 135)
    cv2.circle(image, left_eye, 9, (255, 255, 255), -1)
    cv2.circle(image, right_eye, 9, (0, 0, 0), -1)
    cv2.rectangle(image, (300, 40), (330, 76), (90, 110, 160), -1)
    boxes = np.array([[110, 70, 250, 250], [300, 40, 330, 76]], np.float32)
    landmarks = np.array([[150, 135, 210, 135, 180, 175, 155, 210, 205, 210], [-1] * 10], np.float32)
    flags = np.array([1, -1])
    return image, boxes, landmarks, flags


def pixel(chw: np.ndarray, x: float, y: float) -> float:
    """Mean brightness (mean added back) of the output image around a normalised point."""
    size = chw.shape[1]
    col, row = int(np.clip(x * size, 0, size - 1)), int(np.clip(y * size, 0, size - 1))
    patch = chw[:, max(0, row - 1):row + 2, max(0, col - 1):col + 2]
    return float((patch + MEAN[:, None, None]).mean())


def test_landmarks_and_boxes_follow_the_faces_through_crop_mirror_resize():
    image, boxes, landmarks, flags = face_image()
    transform = TrainTransform(img_size=128, min_face=16)
    seen_face = 0
    checked = {False: 0, True: 0}
    for seed in range(60):
        chw, target = transform(image, boxes, landmarks, flags, np.random.default_rng(seed))
        assert chw.shape == (3, 128, 128) and chw.dtype == np.float32
        assert target.shape[1] == 15 and target.dtype == np.float32
        assert (target[:, :4] >= 0).all() and (target[:, :4] <= 1).all()
        assert (target[:, 2] > target[:, 0]).all() and (target[:, 3] > target[:, 1]).all()
        for row in target:
            if row[14] < 0:
                assert (row[4:14] == -1).all()  # no landmarks stay -1, never shifted or mirrored
                continue
            seen_face += 1
            points = row[4:14].reshape(5, 2)
            # A landmark inside the image must lie inside the (clipped) box of its face.
            visible = ((points >= 0) & (points <= 1)).all(axis=1)
            inside = ((points[:, 0] >= row[0] - 1e-6) & (points[:, 0] <= row[2] + 1e-6)
                      & (points[:, 1] >= row[1] - 1e-6) & (points[:, 1] <= row[3] + 1e-6))
            assert inside[visible].all(), (seed, row)
            # "Left" stays the image-left point after mirroring.
            assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
            # The image moved with the landmarks: one eye landmark is on the white eye, the other on the black one.
            if visible[:2].all():
                at_left, at_right = pixel(chw, *points[0]), pixel(chw, *points[1])
                assert abs(at_left - at_right) > 60, (seed, at_left, at_right)
                small = target[target[:, 14] < 0]
                if len(small):
                    # The small face starts right of the big one; left of it means the image was mirrored, and
                    # then the image-left eye landmark must sit on the originally right (black) eye.
                    mirrored = small[0, 0] < row[0]
                    assert mirrored == (at_left < at_right), seed
                    checked[mirrored] += 1
    assert seen_face > 30
    assert checked[False] >= 3 and checked[True] >= 3


def test_mirror_swaps_points_and_flips_pixels():
    image, boxes, landmarks, flags = face_image()
    flipped, fboxes, fpoints = mirror(image, boxes, landmarks, flags)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_allclose(fboxes[0], [400 - 250, 70, 400 - 110, 250])
    p = fpoints[0].reshape(5, 2)
    # Left eye of the mirrored face is the original right eye, mirrored (x = 400 - 210 = 190).
    np.testing.assert_allclose(p, [[190, 135], [250, 135], [220, 175], [195, 210], [245, 210]])
    assert tuple(flipped[135, 190]) == (0, 0, 0) and tuple(flipped[135, 250]) == (255, 255, 255)
    assert (fpoints[1] == -1).all()


def test_transforms_are_deterministic_under_a_seed():
    image, boxes, landmarks, flags = face_image()
    for transform in (TrainTransform(img_size=96), ValTransform(img_size=96)):
        a = transform(image, boxes, landmarks, flags, np.random.default_rng(123))
        b = transform(image, boxes, landmarks, flags, np.random.default_rng(123))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    outputs = {TrainTransform(img_size=96)(image, boxes, landmarks, flags, np.random.default_rng(s))[0].tobytes()
               for s in range(8)}
    assert len(outputs) > 1


def test_crop_requires_one_face_of_min_size_at_training_scale():
    image = np.zeros((1000, 1000, 3), np.uint8)
    boxes = np.array([[495, 495, 505, 505]], np.float32)  # a 10 px face
    points = np.full((1, 10), -1, np.float32)
    flags = np.array([-1])
    sides = set()
    for seed in range(40):
        crop, cboxes, _, _, cropped = random_crop(image, boxes, points, flags, np.random.default_rng(seed), 640, 16)
        # Side s keeps the face >= 16 px at 640 only if 10 * 640 / s >= 16, i.e. s <= 400: only the 0.3 scale.
        assert cropped and crop.shape[:2] == (300, 300)
        assert (cboxes >= 0).all() and (cboxes <= 300).all()
        sides.add(crop.shape[0])
    assert sides == {300}
    # Nothing can reach 30 px: fall back to the whole image, faces unchanged (reference behaviour).
    crop, cboxes, _, _, cropped = random_crop(image, boxes, points, flags, np.random.default_rng(0), 640, 30)
    assert not cropped and crop.shape == image.shape
    np.testing.assert_array_equal(cboxes, boxes)


def test_crop_keeps_faces_by_centre_and_clips_boxes():
    image = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[10, 10, 60, 60], [100, 50, 180, 130], [250, 150, 299, 199]], np.float32)
    points = np.tile(np.array([[0.3, 0.4, 0.7, 0.4, 0.5, 0.6, 0.35, 0.8, 0.65, 0.8]], np.float32), (3, 1))
    points = points * np.tile(np.array([50, 50], np.float32), 5) + np.tile(boxes[:, :2], 5)
    flags = np.array([1, 1, 1])
    for seed in range(30):
        rng = np.random.default_rng(seed)
        crop, cboxes, cpoints, cflags, cropped = random_crop(image, boxes, points, flags, rng, 64, 8)
        assert cropped
        side = crop.shape[0]
        assert crop.shape[:2] == (side, side) and len(cboxes) >= 1
        assert (cboxes >= 0).all() and (cboxes <= side).all()
        # Landmarks shift with the crop by the same offset as the unclipped boxes' centres.
        assert cpoints.shape == (len(cboxes), 10) and (cflags == 1).all()


def test_faces_without_landmarks_and_images_without_faces():
    image = np.full((120, 160, 3), 50, np.uint8)
    chw, target = TrainTransform(img_size=64)(image, np.zeros((0, 4)), np.zeros((0, 10)), np.zeros(0),
                                              np.random.default_rng(0))
    assert chw.shape == (3, 64, 64) and target.shape == (0, 15)
    # Zero-area boxes (present in WIDER FACE) are dropped rather than passed to the loss.
    boxes = np.array([[10, 10, 10, 30], [20, 20, 80, 90]], np.float32)
    _, target = ValTransform(img_size=64)(image, boxes, np.full((2, 10), -1), np.array([-1, -1]),
                                          np.random.default_rng(0))
    assert len(target) == 1 and (target[:, 4:14] == -1).all() and (target[:, 14] == -1).all()


def test_fallback_pads_with_mean_colour_which_becomes_zero():
    # Landscape image, one face too small for any crop: whole image padded at the bottom with the mean colour.
    image = np.zeros((100, 400, 3), np.uint8)
    image[:] = (250, 20, 250)  # far from the mean colour whatever the photometric distortion does
    boxes = np.array([[10, 10, 13, 13]], np.float32)
    for seed in range(10):
        chw, target = TrainTransform(img_size=80, min_face=16)(image, boxes, np.full((1, 10), -1), np.array([-1]),
                                                               np.random.default_rng(seed))
        assert np.abs(chw[:, 40:, :]).max() <= 1.0  # padding rows: mean colour minus mean
        assert np.abs(chw[:, :15, :]).max() > 50  # image rows
        assert target[0, 3] <= 0.25 + 1e-6


def test_val_transform_normalises_by_input_size_and_mirrors_half_the_time():
    image, boxes, landmarks, flags = face_image()
    chw, target = ValTransform(img_size=50, mirror=False)(image, boxes, landmarks, flags, np.random.default_rng(0))
    assert chw.shape == (3, 50, 50)
    np.testing.assert_allclose(target[0, :4], [110 / 400, 70 / 300, 250 / 400, 250 / 300], rtol=1e-6)
    np.testing.assert_allclose(target[0, 4:6], [150 / 400, 135 / 300], rtol=1e-6)
    flips = 0
    for seed in range(40):
        _, t = ValTransform(img_size=50)(image, boxes, landmarks, flags, np.random.default_rng(seed))
        flips += bool(t[0, 0] > 0.3)
        assert t[0, 4] < t[0, 6]
    assert 8 < flips < 32
    _, kept = ValTransform(img_size=50, mirror=False, keep_aspect=True)(image, boxes, landmarks, flags,
                                                                       np.random.default_rng(0))
    np.testing.assert_allclose(kept[0, :4], [110 / 400, 70 / 400, 250 / 400, 250 / 400], rtol=1e-6)


def test_photometric_distort_keeps_shape_and_changes_colours():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    changed = 0
    for seed in range(20):
        out = photometric_distort(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        changed += not np.array_equal(out, image)
    assert changed >= 15
    assert np.array_equal(image, np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))


def test_make_target_layout():
    target = make_target(np.array([[10, 20, 30, 40]], np.float32), np.arange(10, dtype=np.float32)[None] * 10,
                         np.array([1]), 100, 200)
    np.testing.assert_allclose(target[0], [0.1, 0.1, 0.3, 0.2, 0, 0.05, 0.2, 0.15, 0.4, 0.25, 0.6, 0.35, 0.8, 0.45, 1])


@pytest.mark.parametrize("size", [0, -3])
def test_bad_sizes_rejected(size):
    with pytest.raises(ValueError):
        TrainTransform(img_size=size)
