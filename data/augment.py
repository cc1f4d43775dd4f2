"""Training and validation transforms of the RetinaFace recipe (SPEC section 9).

Training, in the order of the reference RetinaFace PyTorch ``data_augment.py``:

1. random square crop (side = a scale from :data:`CROP_SCALES` times the image's short side, random position); faces
   whose centre lies strictly inside the crop are kept, their boxes shifted and clipped to it, their landmarks
   shifted (not clipped: a point of a face cut by the crop stays where it is); the crop is accepted only when at least
   one kept face is at least ``min_face`` pixels on its shorter side *at training scale* (after the later resize to
   ``img_size``), as the thesis states; after :data:`MAX_CROP_TRIALS` failed draws the whole image is used, as in
   the reference;
2. photometric distortion: brightness, contrast, saturation, hue, each with probability 0.5, contrast either before
   or after the HSV part (chosen at random, as the reference does);
3. pad to a square with the mean colour, image at the top left (only needed for the whole-image fallback; the
   thesis says black padding, but after mean subtraction the mean colour is exactly 0, i.e. black in network input);
4. horizontal mirror with probability 0.5 (boxes and landmarks ``x -> W - x``; left/right eye and left/right mouth
   corner swapped so "left" stays the point with the smaller x);
5. resize to ``img_size`` x ``img_size`` with an interpolation drawn from five OpenCV methods, subtract the BGR mean,
   HWC -> CHW float32; boxes and landmarks are divided by the square's side.

All randomness comes from the ``numpy.random.Generator`` passed in, so a transform is a pure function of its
inputs and that generator. Faces without landmarks (flag -1) keep landmarks of -1 throughout. Faces whose box has
no area (zero width or height, present in WIDER FACE) are dropped: they cannot be regressed.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
"""Crop side as a fraction of the image's short side (SPEC section 9)."""

MAX_CROP_TRIALS = 250
"""Crop draws before falling back to the whole image (reference value)."""

BGR_MEAN = (104, 117, 123)
"""Mean colour in BGR order (OpenCV channel order), subtracted from every input image."""

INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
"""Resize methods drawn uniformly for training images (reference behaviour)."""

BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18
"""Hue shift bound on OpenCV's 0-180 hue scale."""

# Landmark point order: left eye, right eye, nose, left mouth corner, right mouth corner. Mirroring swaps 0<->1, 3<->4.
_MIRROR_POINT_ORDER = np.array([1, 0, 2, 4, 3])


def _as_arrays(boxes: np.ndarray, landmarks: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, ...]:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    landmarks = np.asarray(landmarks, np.float32).reshape(-1, 10).copy()
    flags = np.asarray(flags).reshape(-1).astype(np.int64)
    if not (len(boxes) == len(landmarks) == len(flags)):
        raise ValueError(f"boxes, landmarks and flags disagree on the face count: {len(boxes)}, {len(landmarks)}, "
                         f"{len(flags)}")
    # A face without landmarks carries -1 everywhere, whatever the source file held.
    landmarks[flags <= 0] = -1.0
    return boxes, landmarks, flags


def _drop_empty(boxes: np.ndarray, landmarks: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, ...]:
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], landmarks[keep], flags[keep]


def random_crop(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, flags: np.ndarray,
                rng: np.random.Generator, img_size: int, min_face: float = 16.0,
                scales: Sequence[float] = CROP_SCALES, max_trials: int = MAX_CROP_TRIALS,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Draw a random square crop that keeps at least one face of ``min_face`` pixels at training scale.

    All ``max_trials`` candidate crops are drawn at once and the first acceptable one is used, which gives the
    same result as drawing them one by one and stopping at the first success.

    Args:
        image: BGR uint8 ``(H, W, 3)``.
        boxes: float32 ``(N, 4)`` ``x1, y1, x2, y2`` pixels.
        landmarks: float32 ``(N, 10)``.
        flags: ``(N,)`` 1 / -1 landmark flags.
        rng: Source of randomness.
        img_size: Final training side; a crop of side ``s`` is later scaled by ``img_size / s``.
        min_face: Minimum shorter side, in training-scale pixels, of at least one kept face.
        scales: Candidate crop scales (fractions of the short side).
        max_trials: Number of candidate crops.

    Returns:
        ``(image, boxes, landmarks, flags, cropped)``; ``cropped`` is False when no candidate was acceptable and the
        whole image (all faces with a non-empty box) is returned.
    """
    boxes, landmarks, flags = _as_arrays(boxes, landmarks, flags)
    height, width = image.shape[:2]
    short = min(height, width)
    if len(boxes) == 0:
        return image, boxes, landmarks, flags, False
    sides = (np.asarray(scales, np.float64)[rng.integers(0, len(scales), size=max_trials)] * short).astype(np.int64)
    sides = np.maximum(sides, 1)
    lefts = rng.integers(0, width - sides + 1)
    tops = rng.integers(0, height - sides + 1)
    # Candidate crops (T, 1) against faces (1, N).
    x0, y0, side = lefts[:, None], tops[:, None], sides[:, None]
    cx = (boxes[None, :, 0] + boxes[None, :, 2]) / 2
    cy = (boxes[None, :, 1] + boxes[None, :, 3]) / 2
    inside = (cx > x0) & (cx < x0 + side) & (cy > y0) & (cy < y0 + side)
    clip_w = np.minimum(boxes[None, :, 2], x0 + side) - np.maximum(boxes[None, :, 0], x0)
    clip_h = np.minimum(boxes[None, :, 3], y0 + side) - np.maximum(boxes[None, :, 1], y0)
    kept = inside & (clip_w > 0) & (clip_h > 0)
    big_enough = kept & (np.minimum(clip_w, clip_h) * (img_size / side) >= min_face)
    accepted = np.flatnonzero(big_enough.any(axis=1))
    if accepted.size == 0:
        boxes, landmarks, flags = _drop_empty(boxes, landmarks, flags)
        return image, boxes, landmarks, flags, False
    k = accepted[0]
    left, top, side = int(lefts[k]), int(tops[k]), int(sides[k])
    mask = kept[k]
    crop = image[top:top + side, left:left + side]
    offset = np.array([left, top, left, top], np.float32)
    boxes_c = boxes[mask] - offset
    boxes_c = np.clip(boxes_c, 0, side).astype(np.float32)
    landmarks_c = landmarks[mask]
    flags_c = flags[mask]
    with_points = flags_c > 0
    landmarks_c[with_points] -= np.tile(np.array([left, top], np.float32), 5)
    return crop, boxes_c, landmarks_c, flags_c, True


def _lut_affine(alpha: float, beta: float) -> np.ndarray:
    # Same arithmetic as scaling the image in float, clipping to 0..255 and truncating to uint8, via a table.
    return np.clip(np.arange(256, dtype=np.float64) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes, each applied with probability 0.5.

    Args:
        image: BGR uint8 ``(H, W, 3)`` (not modified).
        rng: Source of randomness.

    Returns:
        A new BGR uint8 image.
    """
    image = np.ascontiguousarray(image)
    contrast_first = rng.random() < 0.5

    def brightness(img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            return cv2.LUT(img, _lut_affine(1.0, rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)))
        return img

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            return cv2.LUT(img, _lut_affine(rng.uniform(*CONTRAST_RANGE), 0.0))
        return img

    def hsv_part(img: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if rng.random() < 0.5:
            hsv[:, :, 1] = cv2.LUT(hsv[:, :, 1], _lut_affine(rng.uniform(*SATURATION_RANGE), 0.0))
        if rng.random() < 0.5:
            shift = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1))
            table = ((np.arange(256) + shift) % 180).astype(np.uint8)
            hsv[:, :, 0] = cv2.LUT(hsv[:, :, 0], table)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    out = brightness(image)
    if contrast_first:
        out = contrast(out)
        out = hsv_part(out)
    else:
        out = hsv_part(out)
        out = contrast(out)
    return out


def pad_to_square(image: np.ndarray, fill: Sequence[float] = BGR_MEAN) -> np.ndarray:
    """Pad an image to a square of its long side, image at the top left, padding in the colour ``fill``."""
    height, width = image.shape[:2]
    if height == width:
        return image
    side = max(height, width)
    out = np.empty((side, side, image.shape[2]), image.dtype)
    out[:] = np.asarray(fill, np.float64).astype(image.dtype)
    out[:height, :width] = image
    return out


def mirror(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray,
           flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip horizontally: ``x -> W - x``, swapping left/right eyes and mouth corners of faces with landmarks.

    Returns:
        ``(image, boxes, landmarks)``, all new arrays.
    """
    width = image.shape[1]
    out = np.ascontiguousarray(image[:, ::-1])
    boxes = boxes.copy()
    boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    landmarks = landmarks.copy()
    with_points = flags > 0
    if with_points.any():
        points = landmarks[with_points].reshape(-1, 5, 2)
        points[:, :, 0] = width - points[:, :, 0]
        landmarks[with_points] = points[:, _MIRROR_POINT_ORDER].reshape(-1, 10)
    return out, boxes, landmarks


def resize_subtract_mean(image: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR,
                         mean: Sequence[float] = BGR_MEAN) -> np.ndarray:
    """Resize to ``size`` x ``size``, subtract the BGR mean and return float32 CHW."""
    resized = cv2.resize(image, (size, size), interpolation=interpolation).astype(np.float32)
    resized -= np.asarray(mean, np.float32)
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def make_target(boxes: np.ndarray, landmarks: np.ndarray, flags: np.ndarray, width: float,
                height: float) -> np.ndarray:
    """Build the ``(N, 15)`` float32 target with coordinates divided by the image size.

    Landmarks of faces without landmarks stay -1.
    """
    target = np.zeros((len(boxes), 15), np.float32)
    scale = np.array([width, height], np.float32)
    target[:, 0:4] = boxes / np.tile(scale, 2)
    with_points = flags > 0
    target[:, 4:14] = -1.0
    target[with_points, 4:14] = landmarks[with_points] / np.tile(scale, 5)
    target[:, 14] = np.where(with_points, 1.0, -1.0)
    return target


class TrainTransform:
    """The training augmentation (module docstring), called as ``transform(image, boxes, landmarks, flags, rng)``.

    Args:
        img_size: Output side in pixels.
        bgr_mean: BGR mean subtracted from the image (also the padding colour).
        min_face: A crop must keep one face at least this many pixels (shorter side) at ``img_size`` scale.
    """

    def __init__(self, img_size: int = 640, bgr_mean: Sequence[float] = BGR_MEAN, min_face: float = 16.0) -> None:
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.img_size = int(img_size)
        self.bgr_mean = tuple(float(v) for v in bgr_mean)
        self.min_face = float(min_face)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, flags: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment one image.

        Args:
            image: BGR uint8 ``(H, W, 3)``.
            boxes: ``(N, 4)`` ``x1, y1, x2, y2`` pixels.
            landmarks: ``(N, 10)`` pixels (-1 when missing).
            flags: ``(N,)`` 1 (landmarks) / -1 (none).
            rng: Source of randomness.

        Returns:
            ``(image float32 (3, img_size, img_size), target float32 (M, 15))``.
        """
        image, boxes, landmarks, flags, _ = random_crop(image, boxes, landmarks, flags, rng, self.img_size,
                                                        self.min_face)
        image = photometric_distort(image, rng)
        image = pad_to_square(image, self.bgr_mean)
        if rng.random() < 0.5:
            image, boxes, landmarks = mirror(image, boxes, landmarks, flags)
        side = image.shape[0]
        interpolation = INTERPOLATIONS[int(rng.integers(0, len(INTERPOLATIONS)))]
        chw = resize_subtract_mean(image, self.img_size, interpolation, self.bgr_mean)
        return chw, make_target(boxes, landmarks, flags, side, side)


class ValTransform:
    """Held-out transform: optional mirror (probability 0.5), resize to a square, subtract the mean.

    Used for the search's architecture steps, which need fixed-size batches. Following SPEC section 9 the image is
    resized straight to ``img_size`` x ``img_size`` (aspect ratio not kept) unless ``keep_aspect`` is set, in which
    case it is first padded to a square with the mean colour like the training fallback. Interpolation is bilinear.

    Args:
        img_size: Output side in pixels.
        bgr_mean: BGR mean subtracted from the image.
        mirror: Flip with probability 0.5.
        keep_aspect: Pad to a square before resizing.
    """

    def __init__(self, img_size: int = 640, bgr_mean: Sequence[float] = BGR_MEAN, mirror: bool = True,
                 keep_aspect: bool = False) -> None:
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.img_size = int(img_size)
        self.bgr_mean = tuple(float(v) for v in bgr_mean)
        self.mirror = bool(mirror)
        self.keep_aspect = bool(keep_aspect)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, flags: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Transform one image; same arguments and outputs as :meth:`TrainTransform.__call__`."""
        boxes, landmarks, flags = _drop_empty(*_as_arrays(boxes, landmarks, flags))
        if self.keep_aspect:
            image = pad_to_square(image, self.bgr_mean)
        if self.mirror and rng.random() < 0.5:
            image, boxes, landmarks = mirror(image, boxes, landmarks, flags)
        height, width = image.shape[:2]
        chw = resize_subtract_mean(image, self.img_size, cv2.INTER_LINEAR, self.bgr_mean)
        return chw, make_target(boxes, landmarks, flags, width, height)
