"""The built-in synthetic face dataset: the default data of every script, generated locally, never downloaded.

Images are drawn with OpenCV: skin-toned ellipses with eyes, nose and mouth placed at the five landmark positions,
rotated, stretched, with or without hair, on gradient / noise / clutter backgrounds with distractor ellipses that
are not faces. Some faces are partly covered by a rectangle, some blurred, some darkened, some tiny, so that the
WIDER FACE Easy / Medium / Hard subsets mean something (rules in :func:`subset_masks`).

The folder has the layout ``--data-root`` expects for real WIDER FACE (see ``docs/DATA.md``)::

    ROOT/train/images/<event>/<name>.jpg   ROOT/train/label.txt      (RetinaFace format, 5 landmarks or -1)
    ROOT/val/images/<event>/<name>.jpg     ROOT/val/label.txt        ROOT/val/wider_val.txt
    ROOT/ground_truth/wider_{face,easy,medium,hard}_val.mat          (official nested-cell structure)
    ROOT/wider_face_split/wider_face_{train,val}_bbx_gt.txt          (official text format)
    ROOT/facenas_dataset.json                                        (written last: marks a complete dataset)

Generation is deterministic: every image has its own generator seeded by ``(seed, split, index)``.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from data.widerface import ATTRIBUTE_NAMES, ImageAnnotation, write_retinaface_labels, write_wider_split_txt
from utils.atomic import atomic_write, atomic_write_text
from utils.errors import FaceNASError

DATASET_VERSION = 1
"""Bump when the generator's output changes; the cache folder name carries it, so old caches are not reused."""

BUILTIN_NAME = f"facenas-synthetic-v{DATASET_VERSION}"
BUILTIN_SEED = 20240607
NUM_TRAIN_IMAGES = 600
NUM_VAL_IMAGES = 150
MIN_IMAGE_SIDE = 240
MAX_IMAGE_SIDE = 512
JPEG_QUALITY = 90

MIN_FACE_SIZE = 8.0
"""Smallest face box side drawn (pixels)."""
MAX_FACE_FRACTION = 0.75
"""Largest face box height as a fraction of the image's short side."""
LANDMARK_MIN_SIZE = 14.0
"""Faces smaller than this (shorter box side) get no landmarks (-1), like the tiny faces of WIDER FACE."""
NO_LANDMARK_PROB = 0.08
"""Probability that a larger face is still left without landmarks."""
INVALID_MAX_SIZE = 10.0
"""Faces with a shorter side below this are marked invalid: in ``face_bbx_list`` but in no subset (ignored)."""
MEDIUM_MIN_SIZE = 20.0
EASY_MIN_SIZE = 40.0
OCCLUSION_PROB = 0.18
BLUR_PROB = 0.18
DARK_PROB = 0.08
HAIR_PROB = 0.65
BODY_PROB = 0.5

MARKER_FILE = "facenas_dataset.json"
SETTINGS = ("easy", "medium", "hard")


@dataclass(frozen=True)
class EventStyle:
    """How the images of one event folder are composed.

    Attributes:
        name: Folder name (``<number>--<Word>`` as in WIDER FACE).
        faces: Inclusive range of faces attempted per image.
        face_px: Range of face box heights in pixels (log-uniform; capped by :data:`MAX_FACE_FRACTION`).
        distractors: Inclusive range of non-face ellipses / blobs per image.
        blur_prob: Probability that a face is blurred.
        occlusion_prob: Probability that a face is partly covered.
    """

    name: str
    faces: tuple[int, int]
    face_px: tuple[float, float]
    distractors: tuple[int, int] = (0, 3)
    blur_prob: float = BLUR_PROB
    occlusion_prob: float = OCCLUSION_PROB


EVENTS = (
    EventStyle("0--Crowd", (8, 20), (8.0, 36.0), (0, 3)),
    EventStyle("1--Meeting", (3, 8), (14.0, 100.0), (0, 3)),
    EventStyle("2--Portrait", (1, 2), (80.0, 400.0), (0, 2), blur_prob=0.1),
    EventStyle("3--Street", (2, 8), (10.0, 140.0), (2, 5)),
    EventStyle("4--Sports", (2, 6), (12.0, 110.0), (0, 3), blur_prob=0.4),
    EventStyle("5--Family", (2, 5), (30.0, 180.0), (0, 2), occlusion_prob=0.3),
)
"""The six event folders; image ``i`` of a split belongs to event ``i % 6``."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of a generated dataset (the built-in one uses the module constants).

    Attributes:
        num_train: Training images.
        num_val: Validation images.
        min_side: Smallest image side (pixels).
        max_side: Largest image side (pixels).
        seed: Base seed.
        jpeg_quality: JPEG quality of the written images.
    """

    num_train: int = NUM_TRAIN_IMAGES
    num_val: int = NUM_VAL_IMAGES
    min_side: int = MIN_IMAGE_SIDE
    max_side: int = MAX_IMAGE_SIDE
    seed: int = BUILTIN_SEED
    jpeg_quality: int = JPEG_QUALITY


BUILTIN_CONFIG = SyntheticConfig()

# Skin tones, BGR.
_SKIN = np.array([[196, 214, 245], [170, 196, 236], [142, 178, 226], [112, 152, 206], [86, 125, 180],
                  [64, 98, 150], [48, 74, 118], [38, 56, 92]], np.float64)
_HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 70, 120], [90, 140, 190], [160, 160, 165], [15, 30, 50]],
                 np.float64)
# Landmarks in face coordinates (x in half-widths, y in half-heights, y down): left eye, right eye, nose,
# left mouth corner, right mouth corner. "Left" is the image-left point of a frontal face, as in RetinaFace labels.
_LANDMARKS = np.array([[-0.36, -0.12], [0.36, -0.12], [0.0, 0.22], [-0.30, 0.50], [0.30, 0.50]])
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel drawing keeps small faces where their landmarks say they are
_ONE = 1 << _SHIFT


def _fx(value: float) -> int:
    return int(round(value * _ONE))


def _colour(base: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[float, ...]:
    return tuple(float(c) for c in np.clip(base + rng.uniform(-jitter, jitter, 3), 0, 255))


def _random_colour(rng: np.random.Generator) -> tuple[float, ...]:
    return tuple(float(c) for c in rng.uniform(0, 255, 3))


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A BGR uint8 background: a four-corner colour gradient, a smooth noise texture or both, plus clutter shapes."""
    kind = rng.integers(0, 3)
    # Resizing tiny random images is the cheap way to get smooth fields: 2x2 -> a bilinear gradient, k x k -> blobs.
    gradient = cv2.resize(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8), (width, height),
                          interpolation=cv2.INTER_LINEAR)
    if kind == 0:
        image = gradient
    else:
        cell = int(rng.integers(6, 48))
        small = rng.integers(0, 256, (max(2, height // cell), max(2, width // cell), 3), dtype=np.uint8)
        texture = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        image = texture if kind == 1 else cv2.addWeighted(gradient, 0.5, texture, 0.5, 0.0)
    image = np.ascontiguousarray(image)
    for _ in range(int(rng.integers(4, 30))):
        colour = _random_colour(rng)
        shape = rng.integers(0, 4)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, max(5, min(width, height) // 3)))
        if shape == 0:
            cv2.rectangle(image, (x, y), (x + size, y + int(rng.integers(4, size + 5))), colour, -1)
        elif shape == 1:
            cv2.circle(image, (x, y), size // 2, colour, -1, cv2.LINE_AA)
        elif shape == 2:
            end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, (x, y), end, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            points = np.stack([rng.integers(-size, size, 3) + x, rng.integers(-size, size, 3) + y], axis=1)
            cv2.fillPoly(image, [points.astype(np.int32)], colour, cv2.LINE_AA)
    return image


def _add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    # A random 64x64 noise tile repeated over the image: sensor-like grain at a fraction of the cost of full noise.
    tile = np.rint(rng.standard_normal((64, 64, 3), dtype=np.float32) * sigma).astype(np.int16)
    height, width = image.shape[:2]
    reps = (height // 64 + 1, width // 64 + 1, 1)
    noise = np.tile(tile, reps)[:height, :width]
    return cv2.add(image.astype(np.int16), noise, dtype=cv2.CV_16S).clip(0, 255).astype(np.uint8)


@dataclass
class _Face:
    cx: float
    cy: float
    a: float  # half width
    b: float  # half height
    angle: float  # degrees, clockwise on screen (OpenCV convention)
    yaw: float

    def rotate(self, local: np.ndarray) -> np.ndarray:
        """Map face coordinates (units of a, b) to image pixels."""
        theta = math.radians(self.angle)
        x = local[..., 0] * self.a
        y = local[..., 1] * self.b
        return np.stack([self.cx + x * math.cos(theta) - y * math.sin(theta),
                         self.cy + x * math.sin(theta) + y * math.cos(theta)], axis=-1)

    def box(self) -> np.ndarray:
        """Axis-aligned box ``x1, y1, x2, y2`` of the rotated face ellipse."""
        theta = math.radians(self.angle)
        ex = math.sqrt((self.a * math.cos(theta)) ** 2 + (self.b * math.sin(theta)) ** 2)
        ey = math.sqrt((self.a * math.sin(theta)) ** 2 + (self.b * math.cos(theta)) ** 2)
        return np.array([self.cx - ex, self.cy - ey, self.cx + ex, self.cy + ey])

    def landmarks(self, jitter: np.ndarray) -> np.ndarray:
        local = _LANDMARKS + jitter
        local = local.copy()
        # Yaw moves the inner features sideways, the nose most.
        local[:, 0] += self.yaw * np.array([0.22, 0.22, 0.35, 0.22, 0.22])
        return self.rotate(local)


def _ellipse(image: np.ndarray, centre: np.ndarray, axes: tuple[float, float], angle: float,
             colour: tuple[float, ...], thickness: int = -1) -> None:
    cv2.ellipse(image, (_fx(centre[0]), _fx(centre[1])), (max(_fx(axes[0]), 1), max(_fx(axes[1]), 1)), angle, 0, 360,
                colour, thickness, cv2.LINE_AA, _SHIFT)


def _draw_face(image: np.ndarray, face: _Face, rng: np.random.Generator, hair: bool) -> tuple[np.ndarray, bool]:
    """Draw one face; return its five landmarks (pixels) and whether the mouth is drawn open."""
    skin = _colour(_SKIN[rng.integers(0, len(_SKIN))], rng, 14)
    if hair:
        hair_colour = _colour(_HAIR[rng.integers(0, len(_HAIR))], rng, 10)
        centre = face.rotate(np.array([0.0, -0.2]))
        _ellipse(image, centre, (face.a * rng.uniform(1.05, 1.2), face.b * rng.uniform(0.85, 1.0)), face.angle,
                 hair_colour)
    _ellipse(image, np.array([face.cx, face.cy]), (face.a, face.b), face.angle, skin)
    # Soft highlight on the forehead: gives larger faces some shading.
    light = tuple(min(255.0, c * 1.08 + 6) for c in skin)
    _ellipse(image, face.rotate(np.array([0.0, -0.45])), (face.a * 0.5, face.b * 0.25), face.angle, light)
    points = face.landmarks(rng.uniform(-0.04, 0.04, (5, 2)))
    scale = face.a
    dark = tuple(float(c) for c in rng.uniform(10, 60, 3))
    line = max(1, int(round(scale * 0.08)))
    # Eyebrows, eyes (white + iris), nose line and tip, mouth.
    for k, side in ((0, -1.0), (1, 1.0)):
        brow = face.rotate(np.array([[side * 0.56 + face.yaw * 0.2, -0.33], [side * 0.16 + face.yaw * 0.2, -0.36]]))
        if scale >= 6:
            cv2.line(image, (_fx(brow[0, 0]), _fx(brow[0, 1])), (_fx(brow[1, 0]), _fx(brow[1, 1])), dark, line,
                     cv2.LINE_AA, _SHIFT)
            _ellipse(image, points[k], (scale * 0.17, scale * 0.1), face.angle, (235.0, 240.0, 240.0))
        _ellipse(image, points[k], (max(scale * 0.08, 0.7), max(scale * 0.08, 0.7)), 0.0, dark)
    if scale >= 5:
        top = face.rotate(np.array([face.yaw * 0.25, -0.05]))
        shade = tuple(c * 0.72 for c in skin)
        cv2.line(image, (_fx(top[0]), _fx(top[1])), (_fx(points[2, 0]), _fx(points[2, 1])), shade, line,
                 cv2.LINE_AA, _SHIFT)
    _ellipse(image, points[2], (max(scale * 0.09, 0.6), max(scale * 0.06, 0.5)), face.angle,
             tuple(c * 0.6 for c in skin))
    lips = (float(rng.uniform(40, 90)), float(rng.uniform(40, 90)), float(rng.uniform(140, 200)))
    open_mouth = bool(rng.random() < 0.15)
    middle = (points[3] + points[4]) / 2 + face.rotate(np.array([0.0, 0.07])) - face.rotate(np.array([0.0, 0.0]))
    if open_mouth:
        width = float(np.linalg.norm(points[4] - points[3])) / 2
        _ellipse(image, middle, (width, max(width * 0.45, 0.6)), face.angle, (30.0, 30.0, 90.0))
    curve = np.stack([points[3], middle, points[4]])
    cv2.polylines(image, [np.round(curve * _ONE).astype(np.int32)], False, lips, max(1, int(round(scale * 0.09))),
                  cv2.LINE_AA, _SHIFT)
    return points, open_mouth


def _overlap(box: np.ndarray, others: Sequence[np.ndarray]) -> float:
    """Largest intersection over the smaller area between ``box`` and ``others``."""
    worst = 0.0
    for other in others:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            small = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            worst = max(worst, iw * ih / max(small, 1e-6))
    return worst


def _grow(box: np.ndarray, factor: float) -> np.ndarray:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) / 2 * factor, (box[3] - box[1]) / 2 * factor
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def generate_image(rng: np.random.Generator, style: EventStyle, width: int, height: int,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image.

    Args:
        rng: Source of randomness.
        style: The event's composition rules.
        width: Image width.
        height: Image height.

    Returns:
        ``(image BGR uint8, boxes float32 (N, 4) x1 y1 x2 y2 with integer coordinates, landmarks float32 (N, 10),
        flags int64 (N,), attributes uint8 (N, 6))``.
    """
    image = make_background(rng, width, height)
    short = min(width, height)
    n_faces = int(rng.integers(style.faces[0], style.faces[1] + 1))
    low = max(style.face_px[0], MIN_FACE_SIZE)
    high = max(low, min(style.face_px[1], MAX_FACE_FRACTION * short))
    heights = np.sort(np.exp(rng.uniform(math.log(low), math.log(high), n_faces)))[::-1]
    faces: list[_Face] = []
    boxes: list[np.ndarray] = []
    for face_h in heights:
        aspect = rng.uniform(0.7, 0.9)
        angle = float(rng.normal(0, 12)) if rng.random() < 0.85 else float(rng.uniform(-40, 40))
        yaw = float(np.clip(rng.normal(0, 0.25), -0.7, 0.7))
        for _ in range(30):
            face = _Face(0.0, 0.0, face_h * aspect / 2, face_h / 2, angle, yaw)
            extent = face.box()
            hw, hh = (extent[2] - extent[0]) / 2, (extent[3] - extent[1]) / 2
            if 2 * hw + 2 >= width or 2 * hh + 2 >= height:
                break
            face.cx = float(rng.uniform(hw + 1, width - hw - 1))
            face.cy = float(rng.uniform(hh + 1, height - hh - 1))
            box = face.box()
            # Keep room for hair and the occluders of neighbours.
            if _overlap(_grow(box, 1.25), [_grow(b, 1.25) for b in boxes]) < 0.02:
                faces.append(face)
                boxes.append(box)
                break
    # Distractors: skin-coloured ellipses without features and coloured blobs, away from the faces.
    for _ in range(int(rng.integers(style.distractors[0], style.distractors[1] + 1))):
        size = float(np.exp(rng.uniform(math.log(MIN_FACE_SIZE), math.log(max(MIN_FACE_SIZE + 1, high)))))
        centre = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        axes = (size * rng.uniform(0.3, 0.6), size * rng.uniform(0.3, 0.6))
        blob = np.array([centre[0] - axes[0], centre[1] - axes[1], centre[0] + axes[0], centre[1] + axes[1]])
        if _overlap(_grow(blob, 1.2), boxes) > 0:
            continue
        base = _SKIN[rng.integers(0, len(_SKIN))] if rng.random() < 0.6 else rng.uniform(0, 255, 3)
        _ellipse(image, centre, axes, float(rng.uniform(0, 180)), _colour(base, rng, 15))
    # Bodies first, so no shoulder is painted over a neighbour's face.
    for face, box in zip(faces, boxes):
        if rng.random() < BODY_PROB:
            centre = np.array([face.cx, box[3] + face.b * 1.1])
            _ellipse(image, centre, (face.a * 2.0, face.b * 0.9), 0.0, _random_colour(rng))
    rows = []
    for face, box in zip(faces, boxes):
        points, open_mouth = _draw_face(image, face, rng, hair=bool(rng.random() < HAIR_PROB))
        x1, y1 = int(math.floor(box[0] + 0.5)), int(math.floor(box[1] + 0.5))
        x2, y2 = int(math.floor(box[2] + 0.5)), int(math.floor(box[3] + 0.5))
        size = min(x2 - x1, y2 - y1)
        attr = np.zeros(len(ATTRIBUTE_NAMES), np.uint8)  # blur expression illumination invalid occlusion pose
        attr[1] = int(open_mouth)
        attr[3] = int(size < INVALID_MAX_SIZE)
        attr[5] = int(abs(face.angle) > 30 or abs(face.yaw) > 0.45)
        if rng.random() < style.occlusion_prob:
            heavy = rng.random() < 0.4
            attr[4] = 2 if heavy else 1
            _occlude(image, np.array([x1, y1, x2, y2], np.float64), rng, heavy)
        if rng.random() < style.blur_prob:
            heavy = rng.random() < 0.4
            attr[0] = 2 if heavy else 1
            sigma = max(size, 4) * (rng.uniform(0.1, 0.18) if heavy else rng.uniform(0.035, 0.07))
            _blur_region(image, np.array([x1, y1, x2, y2]), sigma)
        if rng.random() < DARK_PROB:
            attr[2] = 1
            _scale_region(image, np.array([x1, y1, x2, y2]), rng.uniform(0.3, 0.5))
        has_points = size >= LANDMARK_MIN_SIZE and rng.random() >= NO_LANDMARK_PROB
        rows.append((np.array([x1, y1, x2, y2], np.float32), points.reshape(10).astype(np.float32) if has_points
                     else np.full(10, -1.0, np.float32), 1 if has_points else -1, attr))
    sigma = rng.uniform(0, 5)
    if sigma > 1:
        image = _add_noise(image, rng, sigma)
    if not rows:
        return (image, np.zeros((0, 4), np.float32), np.zeros((0, 10), np.float32), np.zeros(0, np.int64),
                np.zeros((0, len(ATTRIBUTE_NAMES)), np.uint8))
    return (image, np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
            np.array([r[2] for r in rows], np.int64), np.stack([r[3] for r in rows]))


def _occlude(image: np.ndarray, box: np.ndarray, rng: np.random.Generator, heavy: bool) -> None:
    """Cover a band of the face box (lower, upper, left or right part): 15-35 % of it, or 40-60 % when heavy."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    fraction = rng.uniform(0.4, 0.6) if heavy else rng.uniform(0.15, 0.35)
    side = rng.integers(0, 4)
    if side == 0:
        rect = (x1 - 0.05 * w, y2 - fraction * h, x2 + 0.05 * w, y2 + 0.05 * h)
    elif side == 1:
        rect = (x1 - 0.05 * w, y1 + 0.2 * h, x2 + 0.05 * w, y1 + (0.2 + fraction) * h)
    elif side == 2:
        rect = (x1 - 0.05 * w, y1 - 0.05 * h, x1 + fraction * w, y2 + 0.05 * h)
    else:
        rect = (x2 - fraction * w, y1 - 0.05 * h, x2 + 0.05 * w, y2 + 0.05 * h)
    cv2.rectangle(image, (_fx(rect[0]), _fx(rect[1])), (_fx(rect[2]), _fx(rect[3])), _random_colour(rng), -1,
                  cv2.LINE_AA, _SHIFT)


def _region(image: np.ndarray, box: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    h, w = image.shape[:2]
    pad = margin * max(box[2] - box[0], box[3] - box[1])
    return (max(0, int(box[0] - pad)), max(0, int(box[1] - pad)), min(w, int(box[2] + pad) + 1),
            min(h, int(box[3] + pad) + 1))


def _blur_region(image: np.ndarray, box: np.ndarray, sigma: float) -> None:
    x1, y1, x2, y2 = _region(image, box, 0.3)
    if x2 > x1 and y2 > y1:
        image[y1:y2, x1:x2] = cv2.GaussianBlur(image[y1:y2, x1:x2], (0, 0), sigma)


def _scale_region(image: np.ndarray, box: np.ndarray, factor: float) -> None:
    x1, y1, x2, y2 = _region(image, box, 0.15)
    if x2 > x1 and y2 > y1:
        image[y1:y2, x1:x2] = (image[y1:y2, x1:x2].astype(np.float32) * factor).astype(np.uint8)


def subset_masks(boxes: np.ndarray, attributes: np.ndarray) -> dict[str, np.ndarray]:
    """Which faces count in Easy / Medium / Hard (nested: Easy is in Medium is in Hard, as in WIDER FACE).

    * Hard: every valid face (invalid = shorter side below :data:`INVALID_MAX_SIZE`);
    * Medium: valid, shorter side >= :data:`MEDIUM_MIN_SIZE`, at most partly occluded, at most normally blurred;
    * Easy: Medium, shorter side >= :data:`EASY_MIN_SIZE`, not occluded, not blurred, normal pose and lighting.

    Args:
        boxes: ``(N, 4)`` ``x1, y1, x2, y2``.
        attributes: ``(N, 6)`` official attribute columns.

    Returns:
        Bool masks ``(N,)`` per subset name.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    attributes = np.asarray(attributes).reshape(-1, len(ATTRIBUTE_NAMES))
    size = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    blur, _, light, invalid, occlusion, pose = (attributes[:, k] for k in range(6))
    hard = invalid == 0
    medium = hard & (size >= MEDIUM_MIN_SIZE) & (occlusion <= 1) & (blur <= 1)
    easy = medium & (size >= EASY_MIN_SIZE) & (occlusion == 0) & (blur == 0) & (pose == 0) & (light == 0)
    return {"easy": easy, "medium": medium, "hard": hard}


def _cells(items: Sequence[object]) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    for k, item in enumerate(items):
        out[k, 0] = item
    return out


def _index_list(mask: np.ndarray) -> np.ndarray:
    indices = np.flatnonzero(mask) + 1  # MATLAB indices are 1-based
    dtype = np.uint8 if len(mask) <= 255 else np.uint16  # the official files use the smallest type that fits
    return indices.astype(dtype).reshape(-1, 1)


def _savemat_bytes(variables: Mapping[str, np.ndarray]) -> bytes:
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, dict(variables), format="5")
    return buffer.getvalue()


def write_ground_truth(gt_dir: str | os.PathLike, records: Sequence[ImageAnnotation],
                       subsets: Mapping[str, Sequence[np.ndarray]]) -> None:
    """Write the four official ground-truth ``.mat`` files for a val set.

    The structure mirrors the official files: ``event_list`` (E x 1 cells of strings), ``file_list`` (per event an
    n x 1 cell of names without ``.jpg``), ``face_bbx_list`` (per image int32 G x 4 ``x y w h``), the six
    ``*_label_list`` attribute cells (uint8 G x 1) and, in the three subset files, ``gt_list`` (1-based uint8/uint16
    k x 1 indices of the faces that count).

    Args:
        gt_dir: Output folder.
        records: Val images; events keep the order of their first appearance.
        subsets: Per subset name (``easy``, ``medium``, ``hard``), one bool mask per record.
    """
    order: dict[str, list[int]] = {}
    for k, record in enumerate(records):
        order.setdefault(record.event, []).append(k)
    events = list(order)
    base: dict[str, np.ndarray] = {
        "event_list": _cells(events),
        "file_list": _cells([_cells([records[k].name for k in order[e]]) for e in events]),
        "face_bbx_list": _cells([_cells([_xywh_int(records[k].boxes) for k in order[e]]) for e in events]),
    }
    for column, attribute in enumerate(ATTRIBUTE_NAMES):
        base[f"{attribute}_label_list"] = _cells([_cells([
            (records[k].attributes[:, column] if records[k].attributes is not None
             else np.zeros(len(records[k]), np.uint8)).astype(np.uint8).reshape(-1, 1)
            for k in order[e]]) for e in events])
    gt_dir = Path(gt_dir)
    atomic_write(gt_dir / "wider_face_val.mat", lambda h: h.write(_savemat_bytes(base)))
    for setting in SETTINGS:
        masks = subsets[setting]
        variables = dict(base)
        variables["gt_list"] = _cells([_cells([_index_list(np.asarray(masks[k], bool)) for k in order[e]])
                                       for e in events])
        atomic_write(gt_dir / f"wider_{setting}_val.mat", lambda h, v=variables: h.write(_savemat_bytes(v)))


def _xywh_int(boxes: np.ndarray) -> np.ndarray:
    boxes = np.rint(np.asarray(boxes, np.float64).reshape(-1, 4))
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.int32)


def _event_word(event: str) -> str:
    return event.split("--", 1)[-1]


def _generate_split(root: Path, split: str, count: int, config: SyntheticConfig) -> list[ImageAnnotation]:
    split_id = {"train": 0, "val": 1}[split]
    records = []
    per_event = [0] * len(EVENTS)
    for index in range(count):
        rng = np.random.default_rng([config.seed, split_id, index])
        event_id = index % len(EVENTS)
        style = EVENTS[event_id]
        width = int(rng.integers(config.min_side, config.max_side + 1))
        height = int(rng.integers(config.min_side, config.max_side + 1))
        image, boxes, landmarks, flags, attributes = generate_image(rng, style, width, height)
        name = f"{event_id}_{_event_word(style.name)}_synthetic_{per_event[event_id]}"
        per_event[event_id] += 1
        rel = f"{style.name}/{name}.jpg"
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        if not ok:
            raise FaceNASError(f"{root / split / 'images' / rel}: OpenCV could not encode the image")
        target = root / split / "images" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encoded.tobytes())
        records.append(ImageAnnotation(path=rel, boxes=boxes, landmarks=landmarks, flags=flags, attributes=attributes))
    # Group by event like WIDER FACE; the stable sort keeps each event's images in generation order.
    names = [style.name for style in EVENTS]
    records.sort(key=lambda r: names.index(r.event))
    return records


def generate_dataset(out_dir: str | os.PathLike, config: SyntheticConfig = BUILTIN_CONFIG,
                     name: str = BUILTIN_NAME) -> Path:
    """Generate a synthetic dataset into ``out_dir`` (created; must not exist or be empty).

    Not atomic by itself; :func:`ensure_builtin_dataset` generates into a temporary folder and renames it.

    Args:
        out_dir: Output folder.
        config: Sizes and seed.
        name: Dataset name recorded in the marker file.

    Returns:
        ``out_dir`` as a Path.
    """
    if config.num_train < 0 or config.num_val < 1 or not 32 <= config.min_side <= config.max_side:
        raise FaceNASError(f"bad synthetic dataset config {config}: need num_val >= 1 and 32 <= min_side <= "
                           "max_side")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FaceNASError(f"{root}: folder is not empty; choose a new folder for the synthetic dataset")
    root.mkdir(parents=True, exist_ok=True)
    train = _generate_split(root, "train", config.num_train, config)
    val = _generate_split(root, "val", config.num_val, config)
    write_retinaface_labels(root / "train" / "label.txt", train)
    write_retinaface_labels(root / "val" / "label.txt", val)
    atomic_write_text(root / "val" / "wider_val.txt", "".join(f"/{r.path}\n" for r in val))
    write_wider_split_txt(root / "wider_face_split" / "wider_face_train_bbx_gt.txt", train)
    write_wider_split_txt(root / "wider_face_split" / "wider_face_val_bbx_gt.txt", val)
    masks = [subset_masks(r.boxes, r.attributes) for r in val]
    write_ground_truth(root / "ground_truth", val, {s: [m[s] for m in masks] for s in SETTINGS})
    summary = {
        "name": name,
        "version": DATASET_VERSION,
        "config": asdict(config),
        "train_images": len(train),
        "train_faces": int(sum(len(r) for r in train)),
        "val_images": len(val),
        "val_faces": int(sum(len(r) for r in val)),
        "val_subset_faces": {s: int(sum(int(m[s].sum()) for m in masks)) for s in SETTINGS},
        "generator": "data/synthetic.py",
    }
    atomic_write_text(root / MARKER_FILE, json.dumps(summary, indent=2) + "\n")
    return root


def default_cache_dir() -> Path:
    """``$FACENAS_CACHE`` if set, else ``~/.cache/facenas``."""
    env = os.environ.get("FACENAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "facenas"


def _is_complete(root: Path, name: str, config: SyntheticConfig) -> bool:
    try:
        summary = json.loads((root / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return summary.get("name") == name and summary.get("config") == asdict(config)


def _remove_stale_temporaries(cache: Path, name: str, max_age_s: float = 3600.0) -> None:
    # A generation killed hard (SIGKILL, power loss) leaves its temporary folder behind; a live one is minutes old.
    now = time.time()
    for path in cache.glob(f".{name}.tmp-*"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def ensure_builtin_dataset(cache_dir: str | os.PathLike | None = None, verbose: bool = True, *,
                           config: SyntheticConfig = BUILTIN_CONFIG, name: str = BUILTIN_NAME) -> Path:
    """Return the built-in dataset's root, generating it on first use.

    The dataset is generated into a temporary folder next to its final place and renamed when complete, so an
    interrupted generation is never used; concurrent callers both generate and the first rename wins.

    Args:
        cache_dir: Parent folder; default :func:`default_cache_dir`.
        verbose: Print one line (to stderr, before any generation) saying the built-in dataset is used and where.
        config: Sizes and seed (tests pass a tiny one).
        name: Folder name.

    Returns:
        The dataset root (the ``--data-root`` layout).

    Raises:
        FaceNASError: When the folder exists but is not a complete dataset of this name and config, or cannot be
            written.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = cache / name
    if not _is_complete(root, name, config):
        if root.exists():
            raise FaceNASError(f"{root}: exists but is not a complete '{name}' dataset (no valid {MARKER_FILE}); "
                               "delete the folder and rerun to regenerate it")
        try:
            cache.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(cache, name)
            tmp = cache / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        except OSError as exc:
            raise FaceNASError(f"{cache}: cannot create the dataset cache ({exc}); set FACENAS_CACHE to a writable "
                               "folder") from None
        if verbose:
            print(f"Using the built-in synthetic dataset at {root} (generating it once, about 10 s); pass "
                  "--data-root for WIDER FACE", file=sys.stderr, flush=True)
        try:
            generate_dataset(tmp, config, name)
            try:
                os.rename(tmp, root)
            except OSError:
                if not _is_complete(root, name, config):  # not a lost race: a real failure
                    raise
        except OSError as exc:
            raise FaceNASError(f"{cache}: cannot write the built-in dataset ({exc}); set FACENAS_CACHE to a "
                               "writable folder with ~30 MB free") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    elif verbose:
        print(f"Using the built-in synthetic dataset at {root}; pass --data-root for WIDER FACE", file=sys.stderr,
              flush=True)
    return root
