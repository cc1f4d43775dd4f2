"""WIDER FACE annotation readers and writers, image loading, and the torch Datasets for training and evaluation.

Two annotation formats are read:

* the official ``wider_face_split/wider_face_{train,val}_bbx_gt.txt``: an image path line, a face count line, then one
  line per face ``x y w h blur expression illumination invalid occlusion pose``. A count of 0 is followed by one line
  of zeros in the official files; that line is accepted and skipped.
* the RetinaFace ``label.txt``: a ``# relative/path.jpg`` line, then one line per face, either ``x y w h`` followed by
  five ``lx ly flag`` triples and one last value (20 numbers, training file) or only ``x y w h`` (4 numbers, the
  val/test files). Landmarks are -1 when the face has none.

Both readers return :class:`ImageAnnotation` records: boxes as float32 ``(N, 4)`` ``x1, y1, x2, y2`` in pixels,
landmarks as float32 ``(N, 10)`` (left eye, right eye, nose, left mouth corner, right mouth corner; "left" means the
point with the smaller x in a frontal face, as in the RetinaFace labels) and a per-face flag (1 = has landmarks,
-1 = no landmarks). Any malformed line is a :class:`~utils.errors.FaceNASError` naming ``file:line``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.augment import TrainTransform, ValTransform
from utils.atomic import atomic_write_text
from utils.errors import FaceNASError

ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
"""Per-face attribute columns of the official ``bbx_gt.txt`` format, in file order."""

TARGET_COLUMNS = 15
"""Columns of a training target row: 4 box + 10 landmark coordinates + the landmark flag."""

Transform = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass
class ImageAnnotation:
    """The faces annotated in one image.

    Attributes:
        path: Image path relative to the split's ``images/`` folder, with ``/`` separators (``event/name.jpg``).
        boxes: float32 ``(N, 4)`` boxes ``x1, y1, x2, y2`` in pixels (``x2 = x + w``).
        landmarks: float32 ``(N, 10)`` five ``x, y`` points; all -1 for faces without landmarks.
        flags: int64 ``(N,)``: 1 when the face has landmarks, -1 when it has none.
        attributes: uint8 ``(N, 6)`` official attributes (see :data:`ATTRIBUTE_NAMES`), or None when the source
            format has none (``label.txt``).
    """

    path: str
    boxes: np.ndarray
    landmarks: np.ndarray
    flags: np.ndarray
    attributes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def event(self) -> str:
        """The event folder (first path component)."""
        return self.path.split("/")[0] if "/" in self.path else ""

    @property
    def name(self) -> str:
        """The image name without folder and extension (the key of the evaluation files)."""
        return os.path.splitext(self.path.rsplit("/", 1)[-1])[0]


def _empty_annotation(path: str, with_attributes: bool) -> ImageAnnotation:
    return ImageAnnotation(
        path=path,
        boxes=np.zeros((0, 4), np.float32),
        landmarks=np.zeros((0, 10), np.float32),
        flags=np.zeros((0,), np.int64),
        attributes=np.zeros((0, len(ATTRIBUTE_NAMES)), np.uint8) if with_attributes else None,
    )


def _numbers(tokens: Sequence[str], where: str) -> list[float]:
    """Parse tokens as finite floats, raising a FaceNASError that quotes the first bad token."""
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise FaceNASError(f"{where}: '{token}' is not a number") from None
        if not np.isfinite(value):
            raise FaceNASError(f"{where}: '{token}' is not a finite number")
        values.append(value)
    return values


def _normalise_path(raw: str) -> str:
    # Lists from other tools use backslashes or a leading slash ('/0--Parade/x.jpg' in RetinaFace's wider_val.txt).
    return raw.strip().replace("\\", "/").lstrip("/")


def _check_box(values: Sequence[float], where: str) -> None:
    if values[2] < 0 or values[3] < 0:
        raise FaceNASError(f"{where}: negative box width or height ({values[2]:g} x {values[3]:g})")


def read_wider_split_txt(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Read an official ``wider_face_{train,val}_bbx_gt.txt`` file.

    Args:
        path: The annotation file.

    Returns:
        One record per image, in file order; landmarks are absent (-1, flag -1) and ``attributes`` hold the six
        official columns.

    Raises:
        FaceNASError: On a missing file, a bad count, a line with the wrong number of fields, a non-numeric field or
            a file that ends inside an image's box list; the message names ``file:line``.
    """
    path = Path(path)
    lines = _read_lines(path)
    records: list[ImageAnnotation] = []
    i = 0
    n = len(lines)
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        where = f"{path}:{i + 1}"
        image_path = _normalise_path(lines[i])
        if all(_is_number(token) for token in image_path.split()):
            raise FaceNASError(
                f"{where}: expected an image path line, found '{lines[i].strip()}' "
                "(does the previous image's face count match its box lines?)"
            )
        i += 1
        if i >= n:
            raise FaceNASError(f"{path}:{i + 1}: file ends after image path '{image_path}'; expected its face count")
        count_text = lines[i].strip()
        if not (count_text.isascii() and count_text.isdigit()):
            raise FaceNASError(f"{path}:{i + 1}: bad face count '{count_text}' for '{image_path}' (expected an integer"
                               " >= 0)")
        count = int(count_text)
        i += 1
        if count == 0:
            # Known quirk of the official files: an image without faces still has one line of ten zeros.
            if i < n and lines[i].split() and all(_is_number(t) and float(t) == 0 for t in lines[i].split()):
                if len(lines[i].split()) != 10:
                    raise FaceNASError(f"{path}:{i + 1}: expected 10 fields after a face count of 0, "
                                       f"found {len(lines[i].split())}")
                i += 1
            records.append(_empty_annotation(image_path, with_attributes=True))
            continue
        rows = []
        for k in range(count):
            if i >= n:
                raise FaceNASError(f"{path}:{i + 1}: file ends after {k} of {count} box lines for '{image_path}' "
                                   "(truncated file?)")
            fields = lines[i].split()
            where = f"{path}:{i + 1}"
            if not fields:
                raise FaceNASError(f"{where}: blank line where box {k + 1} of {count} for '{image_path}' was expected")
            if len(fields) == 1 and not _is_number(fields[0]):
                raise FaceNASError(f"{where}: found an image path after {k} of {count} box lines for '{image_path}' "
                                   "(is the face count too large?)")
            if len(fields) != 10:
                raise FaceNASError(f"{where}: expected 10 fields 'x y w h blur expression illumination invalid "
                                   f"occlusion pose', found {len(fields)}")
            values = _numbers(fields, where)
            _check_box(values, where)
            rows.append(values)
            i += 1
        table = np.asarray(rows, np.float64)
        xywh = table[:, :4]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        records.append(ImageAnnotation(
            path=image_path,
            boxes=boxes,
            landmarks=np.full((count, 10), -1.0, np.float32),
            flags=np.full((count,), -1, np.int64),
            attributes=table[:, 4:].astype(np.uint8),
        ))
    return records


def read_retinaface_labels(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Read a RetinaFace ``label.txt`` (training form with landmarks, or the val/test form with boxes only).

    A face has landmarks when its first landmark x is >= 0 (the rule of the reference loader); otherwise all ten
    landmark values are set to -1 and its flag is -1. The per-point visibility values and the last value of a
    20-number line are read but not used.

    Args:
        path: The ``label.txt`` file.

    Returns:
        One record per ``#`` line, in file order (``attributes`` is None).

    Raises:
        FaceNASError: On a missing file, a face line before the first ``#`` line, a line with other than 4 or 20
            numbers or a non-numeric field; the message names ``file:line``.
    """
    path = Path(path)
    lines = _read_lines(path)
    records: list[ImageAnnotation] = []
    current_path: str | None = None
    rows: list[list[float]] = []

    def flush() -> None:
        if current_path is None:
            return
        if not rows:
            records.append(_empty_annotation(current_path, with_attributes=False))
            return
        table = np.asarray(rows, np.float64)
        boxes = np.concatenate([table[:, :2], table[:, :2] + table[:, 2:4]], axis=1).astype(np.float32)
        landmarks = np.full((len(rows), 10), -1.0, np.float32)
        flags = np.full((len(rows),), -1, np.int64)
        full = table[:, 4] >= 0  # 4-number rows were padded with -1 below
        if full.any():
            points = table[full][:, 4:19].reshape(-1, 5, 3)[:, :, :2].reshape(-1, 10)
            landmarks[full] = points.astype(np.float32)
            flags[full] = 1
        records.append(ImageAnnotation(path=current_path, boxes=boxes, landmarks=landmarks, flags=flags))

    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        where = f"{path}:{number}"
        if stripped.startswith("#"):
            flush()
            parts = stripped[1:].split()
            # The insightface variant appends the image width and height after the path.
            if len(parts) not in (1, 3) or (len(parts) == 3 and not all(p.isdigit() for p in parts[1:])):
                raise FaceNASError(f"{where}: expected '# relative/path.jpg' (optionally followed by width and "
                                   f"height), found '{stripped}'")
            current_path = _normalise_path(parts[0])
            rows = []
            continue
        if current_path is None:
            raise FaceNASError(f"{where}: face line before the first '# path' line")
        fields = stripped.split()
        if len(fields) not in (4, 20):
            raise FaceNASError(f"{where}: expected 4 numbers (x y w h) or 20 (x y w h, 5 x 'lx ly flag', one more), "
                               f"found {len(fields)}")
        values = _numbers(fields, where)
        _check_box(values, where)
        if len(values) == 4:
            values = values + [-1.0] * 16
        rows.append(values)
    flush()
    return records


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        raise FaceNASError(f"{path}: annotation file not found; check --data-root (layout in docs/DATA.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceNASError(f"{path}: cannot read the annotation file ({exc})") from None


def _fmt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def format_retinaface_labels(records: Sequence[ImageAnnotation], with_landmarks: bool = True) -> str:
    """Format records as a RetinaFace ``label.txt``.

    Args:
        records: Images to write, in order.
        with_landmarks: Write the 20-number training form; otherwise only ``x y w h``.

    Returns:
        The file text.
    """
    out = []
    for record in records:
        out.append(f"# {record.path}")
        for box, points, flag in zip(_xywh(record.boxes), record.landmarks, record.flags):
            fields = [_fmt(v) for v in box]
            if with_landmarks:
                if flag > 0:
                    for x, y in np.asarray(points, np.float64).reshape(5, 2):
                        fields += [_fmt(x), _fmt(y), "0.0"]
                    fields.append("1.0")
                else:
                    fields += ["-1.0"] * 16
            out.append(" ".join(fields))
    return "\n".join(out) + "\n"


def format_wider_split_txt(records: Sequence[ImageAnnotation]) -> str:
    """Format records in the official ``wider_face_*_bbx_gt.txt`` form (boxes rounded to integers).

    Images without faces get the official ``0`` count followed by a line of ten zeros. Records without attributes
    are written with zeros in the six attribute columns.

    Args:
        records: Images to write, in order.

    Returns:
        The file text.
    """
    out = []
    for record in records:
        out.append(record.path)
        out.append(str(len(record)))
        if len(record) == 0:
            out.append("0 0 0 0 0 0 0 0 0 0 ")
            continue
        attrs = record.attributes if record.attributes is not None else np.zeros((len(record), 6), np.uint8)
        for box, attr in zip(np.rint(_xywh(record.boxes)).astype(np.int64), attrs):
            # The official files end every face line with a space; keep that for byte-level familiarity.
            out.append(" ".join(str(int(v)) for v in (*box, *attr)) + " ")
    return "\n".join(out) + "\n"


def write_retinaface_labels(path: str | os.PathLike, records: Sequence[ImageAnnotation],
                            with_landmarks: bool = True) -> None:
    """Write records as a RetinaFace ``label.txt`` atomically (see :func:`format_retinaface_labels`)."""
    atomic_write_text(path, format_retinaface_labels(records, with_landmarks))


def write_wider_split_txt(path: str | os.PathLike, records: Sequence[ImageAnnotation]) -> None:
    """Write records as an official ``bbx_gt.txt`` file atomically (see :func:`format_wider_split_txt`)."""
    atomic_write_text(path, format_wider_split_txt(records))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as BGR uint8 ``(H, W, 3)`` with OpenCV.

    Args:
        path: The image file.

    Returns:
        The image.

    Raises:
        FaceNASError: When the file is missing or OpenCV cannot decode it.
    """
    path = Path(path)
    try:
        # imdecode on the raw bytes also copes with non-ASCII paths, which cv2.imread does not on every platform.
        raw = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise FaceNASError(f"{path}: image not found; check --data-root and the annotation file") from None
    except OSError as exc:
        raise FaceNASError(f"{path}: cannot read the image ({exc})") from None
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if image is None:
        raise FaceNASError(f"{path}: not a readable image (corrupt or unsupported format); replace or remove it")
    return image


class WiderFaceDetection(Dataset):
    """Training / held-out dataset over ``ROOT/<split>/label.txt`` and ``ROOT/<split>/images/``.

    Each item is ``(image, target)``: the transformed image as a float32 tensor ``(3, H, W)`` and a float32 array
    ``(N, 15)`` of ``x1, y1, x2, y2`` and ten landmark coordinates normalised by the transformed image size, then the
    landmark flag (1 or -1).

    Augmentation randomness comes from a NumPy generator seeded by ``(seed, epoch, index)``, so a given epoch yields
    the same samples whatever the number of DataLoader workers. Call :meth:`set_epoch` before iterating each epoch
    (with ``persistent_workers=True`` the workers keep the epoch they were started with).

    Args:
        root: The data root (layout in ``docs/DATA.md``).
        split: Sub-folder to read (``train`` or ``val``).
        transform: Called as ``transform(image, boxes, landmarks, flags, rng)``; default ``TrainTransform()`` for
            ``train`` and ``ValTransform()`` otherwise.
        seed: Base seed (>= 0) of the augmentation randomness.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Transform | None = None,
                 seed: int = 0) -> None:
        if seed < 0:
            raise FaceNASError(f"seed must be >= 0, got {seed}")
        self.root = Path(root)
        self.split = split
        label_file = self.root / split / "label.txt"
        if not label_file.is_file():
            raise FaceNASError(f"{label_file}: not found; --data-root must hold {split}/label.txt and "
                               f"{split}/images/ (see docs/DATA.md)")
        self.records = read_retinaface_labels(label_file)
        self.image_dir = self.root / split / "images"
        self.transform: Transform = transform or (TrainTransform() if split == "train" else ValTransform())
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (>= 0)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator used for item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        record = self.records[index]
        image = read_image(self.image_dir / record.path)
        image_t, target = self.transform(image, record.boxes, record.landmarks, record.flags, self.rng(index))
        return torch.from_numpy(np.ascontiguousarray(image_t, dtype=np.float32)), target.astype(np.float32)


def detection_collate(batch: Sequence[tuple[torch.Tensor, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images and zero-pad targets to the largest face count in the batch.

    Args:
        batch: ``(image (3, H, W), target (N_i, 15))`` pairs with equal image shapes.

    Returns:
        ``images (B, 3, H, W)`` and ``targets (B, M, 15)`` with ``M = max N_i`` (possibly 0). Padding rows are all
        zero, so ``targets[..., 14] != 0`` is the mask of real faces (1 = with landmarks, -1 = without).
    """
    images = torch.stack([torch.as_tensor(item[0]) for item in batch])
    counts = [len(item[1]) for item in batch]
    targets = torch.zeros((len(batch), max(counts, default=0), TARGET_COLUMNS), dtype=torch.float32)
    for i, (_, target) in enumerate(batch):
        if counts[i]:
            targets[i, : counts[i]] = torch.as_tensor(np.asarray(target, np.float32))
    return images, targets


def list_val_images(root: str | os.PathLike, gt_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """The val images as ``(event, name)`` pairs, in evaluation order.

    The order comes from the ground truth ``wider_face_val.mat`` (``gt_dir``, default ``ROOT/ground_truth``) when it
    exists, since that is the set the evaluator scores; otherwise from ``ROOT/val/wider_val.txt``, otherwise from
    ``ROOT/val/label.txt``.

    Args:
        root: The data root.
        gt_dir: Folder of the ground-truth ``.mat`` files.

    Returns:
        ``(event, name)`` pairs; the image is ``ROOT/val/images/<event>/<name>.jpg``.

    Raises:
        FaceNASError: When none of the three sources exists or one is malformed.
    """
    root = Path(root)
    mat = Path(gt_dir) / "wider_face_val.mat" if gt_dir is not None else root / "ground_truth" / "wider_face_val.mat"
    if mat.is_file():
        from data.wider_eval import load_image_list

        return load_image_list(mat.parent)
    if gt_dir is not None:
        raise FaceNASError(f"{mat}: not found; --gt-dir must hold the official wider_face_val.mat")
    listing = root / "val" / "wider_val.txt"
    if listing.is_file():
        pairs = []
        for number, line in enumerate(_read_lines(listing), start=1):
            rel = _normalise_path(line)
            if not rel:
                continue
            if "/" not in rel or len(rel.split()) != 1:
                raise FaceNASError(f"{listing}:{number}: expected 'event/name.jpg', found '{line.strip()}'")
            event, file = rel.rsplit("/", 1)
            pairs.append((event, os.path.splitext(file)[0]))
        return pairs
    labels = root / "val" / "label.txt"
    if labels.is_file():
        return [(r.event, r.name) for r in read_retinaface_labels(labels)]
    raise FaceNASError(f"{root}: no val image list; expected ground_truth/wider_face_val.mat, val/wider_val.txt or "
                       "val/label.txt (see docs/DATA.md)")


class WiderFaceValImages(Dataset):
    """The val images for evaluation: items are ``(image BGR uint8 (H, W, 3), event, name)``.

    Iterate it directly, or wrap it in a DataLoader with ``batch_size=None`` to decode images in worker processes.

    Args:
        root: The data root; images are ``ROOT/val/images/<event>/<name>.jpg``.
        gt_dir: Folder of the ground-truth ``.mat`` files that fixes the order (see :func:`list_val_images`).
    """

    def __init__(self, root: str | os.PathLike, gt_dir: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.items = list_val_images(self.root, gt_dir)
        self.image_dir = self.root / "val" / "images"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str, str]:
        event, name = self.items[index]
        return read_image(self.image_dir / event / f"{name}.jpg"), event, name

    def __iter__(self) -> Iterator[tuple[np.ndarray, str, str]]:
        for index in range(len(self)):
            yield self[index]
