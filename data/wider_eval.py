"""The official WIDER FACE val evaluation (Easy / Medium / Hard AP), vectorised with NumPy.

It reproduces the numbers of the widely used Python port of the official MATLAB code (``widerface_evaluate/
evaluation.py`` of the RetinaFace repositories), including its semantics:

* prediction files ``PRED/<event>/<name>.txt``: the image name, the box count, then ``x y w h score`` lines;
* scores are min-max normalised over the whole prediction set, with the port's starting values (minimum starts at
  1, maximum at 0, so scores already inside [0, 1] are stretched from min(1, lowest) to max(0, highest));
* ground-truth and predicted boxes become ``x1, y1, x2 = x + w, y2 = y + h``; IoU uses the +1 pixel convention
  (``(x2 - x1 + 1) * (y2 - y1 + 1)``);
* predictions are visited in file order; each one is matched to the ground-truth box of highest IoU (first on
  ties); when that IoU is >= 0.5: a box outside the subset's ``gt_list`` is "ignored" and the prediction is not
  counted as a proposal at all; a box inside the subset counts as recalled by the first prediction that reaches it,
  and any later prediction on it stays a proposal (a false positive in precision terms);
* for each of 1,000 thresholds ``1 - (t + 1) / 1000`` an image contributes the proposals and recalled faces of its
  predictions up to the *last* one (in file order) whose score reaches the threshold, which is why prediction
  files should list boxes by descending score;
* precision = recalled / proposals, recall = recalled / faces in the subset (counted over all images, including
  images without predictions); AP is the VOC area under the precision envelope.

Deliberate differences from the port (none changes the numbers for a complete, well-formed prediction folder):
a prediction file whose boxes are not listed by descending score is sorted (stably) before scoring and reported once
as a warning, because the protocol assumes that order and the port's file-order result would silently undercount
(``sort_boxes=False`` keeps the file order, as the port does); a missing prediction file counts as zero detections
(the port raises KeyError) and is reported once as a warning;
files are looked up by file name rather than by the name written inside; files that are not val images are not
read; malformed files raise :class:`~utils.errors.FaceNASError` with ``file:line``; when every score is equal
(the port divides 0 by 0 and scores AP 0) every normalised score becomes 1.

Why it is fast: the IoU, best-match and first-hit steps are array operations per image, and the 1,000-threshold
loop disappears: an image's count at threshold ``t`` equals the number of its predictions whose *suffix maximum*
score (highest score at or after it in file order) reaches the threshold, so every prediction adds 1 to a histogram
bin and a cumulative sum gives all thresholds at once.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import FaceNASError
from utils.figures import pyplot, save_figure

SETTINGS = ("easy", "medium", "hard")
"""Subset names in report order."""

GT_FILES = {"all": "wider_face_val.mat", "easy": "wider_easy_val.mat", "medium": "wider_medium_val.mat",
            "hard": "wider_hard_val.mat"}
"""The four ground-truth files a gt folder must hold."""

THRESH_NUM = 1000
"""Number of score thresholds of the official protocol."""

IOU_THRESH = 0.5
"""Match threshold of the official protocol."""


@dataclass
class WiderGroundTruth:
    """The val ground truth of the four official ``.mat`` files, flattened to one entry per image.

    Attributes:
        events: Event folder of each image.
        names: Image name (no extension) of each image.
        boxes: float64 ``(G, 4)`` ``x, y, w, h`` boxes of each image (all annotated faces).
        keep: Per subset, a bool ``(G,)`` mask per image: faces that count in that subset.
        face_counts: Per subset, the number of faces that count (the recall denominator).
        gt_dir: Folder the files came from.
    """

    events: list[str]
    names: list[str]
    boxes: list[np.ndarray]
    keep: dict[str, list[np.ndarray]]
    face_counts: dict[str, int]
    gt_dir: Path = field(default_factory=Path)

    def __len__(self) -> int:
        return len(self.names)


def _loadmat(path: Path, variables: list[str]) -> dict:
    from scipy.io import loadmat  # imported here: scipy is slow to import and only needed for evaluation

    if not path.is_file():
        raise FaceNASError(f"{path}: not found; the gt folder must hold {', '.join(GT_FILES.values())} "
                           "(see docs/DATA.md)")
    try:
        # Reading only the needed variables skips the six attribute cells: 4x faster on the real files.
        return loadmat(str(path), variable_names=variables)
    except Exception as exc:  # scipy raises several unrelated types for a damaged file
        raise FaceNASError(f"{path}: cannot read the MATLAB file ({type(exc).__name__}: {exc})") from None


def _cell(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise FaceNASError(f"{path}: variable '{key}' missing; is this an official WIDER FACE ground-truth file?")
    value = mat[key]
    if not isinstance(value, np.ndarray) or value.dtype != object:
        raise FaceNASError(f"{path}: variable '{key}' is not a cell array")
    return value.reshape(-1)


def _string(value: object) -> str:
    return str(np.asarray(value).reshape(-1)[0])


def load_image_list(gt_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(event, name)`` pairs of ``gt_dir/wider_face_val.mat`` in file order."""
    path = Path(gt_dir) / GT_FILES["all"]
    mat = _loadmat(path, ["event_list", "file_list"])
    events = _cell(mat, "event_list", path)
    files = _cell(mat, "file_list", path)
    if len(events) != len(files):
        raise FaceNASError(f"{path}: event_list has {len(events)} entries but file_list {len(files)}")
    return [(_string(ev), _string(name)) for ev, names in zip(events, files) for name in np.asarray(names).reshape(-1)]


def load_ground_truth(gt_dir: str | os.PathLike) -> WiderGroundTruth:
    """Read the four official ``.mat`` files of a gt folder.

    Args:
        gt_dir: Folder holding ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``.

    Returns:
        The flattened ground truth.

    Raises:
        FaceNASError: On a missing or unreadable file, a missing variable, files that disagree on the number of
            events or images, or a ``gt_list`` index outside its image's boxes.
    """
    gt_dir = Path(gt_dir)
    path = gt_dir / GT_FILES["all"]
    mat = _loadmat(path, ["event_list", "file_list", "face_bbx_list"])
    events_cell = _cell(mat, "event_list", path)
    files_cell = _cell(mat, "file_list", path)
    boxes_cell = _cell(mat, "face_bbx_list", path)
    if not (len(events_cell) == len(files_cell) == len(boxes_cell)):
        raise FaceNASError(f"{path}: event_list, file_list and face_bbx_list differ in length")
    events: list[str] = []
    names: list[str] = []
    boxes: list[np.ndarray] = []
    for e, (event, files, event_boxes) in enumerate(zip(events_cell, files_cell, boxes_cell)):
        files = np.asarray(files).reshape(-1)
        event_boxes = np.asarray(event_boxes).reshape(-1)
        if len(files) != len(event_boxes):
            raise FaceNASError(f"{path}: event {e + 1} has {len(files)} file names but {len(event_boxes)} box lists")
        event_name = _string(event)
        for name, image_boxes in zip(files, event_boxes):
            image_boxes = np.asarray(image_boxes, np.float64)
            if image_boxes.size == 0:
                image_boxes = image_boxes.reshape(0, 4)
            if image_boxes.ndim != 2 or image_boxes.shape[1] != 4:
                raise FaceNASError(f"{path}: boxes of {event_name}/{_string(name)} have shape {image_boxes.shape}, "
                                   "expected (n, 4)")
            events.append(event_name)
            names.append(_string(name))
            boxes.append(image_boxes)
    keep: dict[str, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    for setting in SETTINGS:
        sub_path = gt_dir / GT_FILES[setting]
        sub_cell = _cell(_loadmat(sub_path, ["gt_list"]), "gt_list", sub_path)
        if len(sub_cell) != len(events_cell):
            raise FaceNASError(f"{sub_path}: gt_list has {len(sub_cell)} events, {path.name} has {len(events_cell)}")
        masks: list[np.ndarray] = []
        total = 0
        for event_lists in sub_cell:
            for index_list in np.asarray(event_lists).reshape(-1):
                image = len(masks)
                if image >= len(boxes):
                    raise FaceNASError(f"{sub_path}: gt_list has more images than {path.name}")
                indices = np.asarray(index_list).reshape(-1).astype(np.int64)
                n_boxes = len(boxes[image])
                if indices.size and (indices.min() < 1 or indices.max() > n_boxes):
                    raise FaceNASError(f"{sub_path}: gt_list of {events[image]}/{names[image]} has index "
                                       f"{int(indices.max() if indices.max() > n_boxes else indices.min())} outside "
                                       f"1..{n_boxes}")
                mask = np.zeros(n_boxes, bool)
                mask[indices - 1] = True
                masks.append(mask)
                # The port counts the list length (duplicates included) as the subset's faces.
                total += int(indices.size)
        if len(masks) != len(boxes):
            raise FaceNASError(f"{sub_path}: gt_list has {len(masks)} images, {path.name} has {len(boxes)}")
        keep[setting] = masks
        counts[setting] = total
    return WiderGroundTruth(events=events, names=names, boxes=boxes, keep=keep, face_counts=counts, gt_dir=gt_dir)


def parse_prediction_text(text: str, path: str | os.PathLike, expected_name: str | None = None) -> np.ndarray:
    """Parse one prediction file's text.

    Args:
        text: File content.
        path: Name used in error messages.
        expected_name: When given, the image name on line 1 (folder and extension stripped) must equal it.

    Returns:
        float64 ``(N, 5)`` rows ``x, y, w, h, score`` in file order.

    Raises:
        FaceNASError: ``file:line: ...`` for a missing name or count line, a count that does not match the box
            lines, a box line without exactly five numbers, a non-finite number or a negative width or height.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise FaceNASError(f"{path}:1: expected the image name on the first line")
    if expected_name is not None:
        written = os.path.splitext(lines[0].strip().replace("\\", "/").rsplit("/", 1)[-1])[0]
        if written != expected_name:
            raise FaceNASError(f"{path}:1: names image '{lines[0].strip()}' but the file is for '{expected_name}'")
    if len(lines) < 2:
        raise FaceNASError(f"{path}:2: file ends before the box count line")
    count_text = lines[1].strip()
    if not (count_text.isascii() and count_text.isdigit()):
        raise FaceNASError(f"{path}:2: expected the number of boxes (an integer >= 0), found '{count_text}'")
    count = int(count_text)
    rows = []
    numbers = []
    for offset, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise FaceNASError(f"{path}:{offset}: expected 5 numbers 'x y w h score', found {len(fields)}")
        if len(rows) == count:
            raise FaceNASError(f"{path}:{offset}: more box lines than the count {count} on line 2")
        rows.append(offset)
        numbers.extend(fields)
    if len(rows) < count:
        raise FaceNASError(f"{path}:{len(lines) + 1}: expected {count} box lines, found {len(rows)} (truncated file?)")
    if count == 0:
        return np.zeros((0, 5), np.float64)
    try:
        values = np.array([float(v) for v in numbers], np.float64).reshape(count, 5)
    except ValueError:
        for k, line_no in enumerate(rows):
            for token in numbers[5 * k:5 * k + 5]:
                try:
                    float(token)
                except ValueError:
                    raise FaceNASError(f"{path}:{line_no}: '{token}' is not a number") from None
        raise
    bad = ~np.isfinite(values).all(axis=1) | (values[:, 2] < 0) | (values[:, 3] < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise FaceNASError(f"{path}:{rows[k]}: box {' '.join(numbers[5 * k:5 * k + 5])} has a non-finite value or a "
                           "negative width or height")
    return values


def read_prediction_folder(pred_dir: str | os.PathLike, gt: WiderGroundTruth) -> tuple[list[np.ndarray], int]:
    """Read ``pred_dir/<event>/<name>.txt`` for every ground-truth image.

    Args:
        pred_dir: Prediction folder.
        gt: Ground truth giving the images to read.

    Returns:
        ``(predictions, missing)``: one float64 ``(N, 5)`` array per ground-truth image (empty when its file is
        missing) and the number of missing files.

    Raises:
        FaceNASError: When ``pred_dir`` is not a folder, when no file matches any ground-truth image, or on a
            malformed file.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FaceNASError(f"{pred_dir}: prediction folder not found")
    preds: list[np.ndarray] = []
    missing = 0
    for event, name in zip(gt.events, gt.names):
        path = pred_dir / event / f"{name}.txt"
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            missing += 1
            preds.append(np.zeros((0, 5), np.float64))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise FaceNASError(f"{path}: cannot read the prediction file ({exc})") from None
        preds.append(parse_prediction_text(text, path, expected_name=name))
    if len(gt) and missing == len(gt):
        raise FaceNASError(f"{pred_dir}: none of the {len(gt)} val images has a prediction file "
                           f"'<event>/<name>.txt' here; is this the right folder for the ground truth in {gt.gt_dir}?")
    return preds, missing


def normalise_scores(preds: list[np.ndarray]) -> list[np.ndarray]:
    """Min-max normalise the score column over all predictions, as the official port does.

    The range starts at min 1 / max 0 (port behaviour). Returns new arrays; when all scores are equal they become 1.
    """
    lowest, highest = 1.0, 0.0
    for p in preds:
        if len(p):
            lowest = min(lowest, float(p[:, 4].min()))
            highest = max(highest, float(p[:, 4].max()))
    diff = highest - lowest
    out = []
    for p in preds:
        q = p.copy()
        if len(q):
            q[:, 4] = (q[:, 4] - lowest) / diff if diff != 0 else 1.0
        out.append(q)
    return out


def _overlaps(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """IoU ``(P, G)`` with the +1 pixel convention, in the same floating-point order as the port."""
    px1, py1 = pred_xywh[:, 0], pred_xywh[:, 1]
    px2, py2 = pred_xywh[:, 2] + px1, pred_xywh[:, 3] + py1
    gx1, gy1 = gt_xywh[:, 0], gt_xywh[:, 1]
    gx2, gy2 = gt_xywh[:, 2] + gx1, gt_xywh[:, 3] + gy1
    iw = np.minimum(px2[:, None], gx2[None, :]) - np.maximum(px1[:, None], gx1[None, :]) + 1
    ih = np.minimum(py2[:, None], gy2[None, :]) - np.maximum(py1[:, None], gy1[None, :]) + 1
    pred_area = (px2 - px1 + 1) * (py2 - py1 + 1)
    gt_area = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
    inter = iw * ih
    union = pred_area[:, None] + gt_area[None, :] - inter
    hit = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hit, inter / union, 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC area under the precision envelope (recall sentinels 0 and 1, precision sentinels 0 and 0)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # Running maximum from the right; np.maximum propagates NaN exactly like the port's loop.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def thresholds(thresh_num: int = THRESH_NUM) -> np.ndarray:
    """The score thresholds ``1 - (t + 1) / thresh_num``, t = 0..thresh_num-1 (descending)."""
    return 1 - (np.arange(thresh_num) + 1) / thresh_num


def evaluate_predictions(preds: list[np.ndarray], gt: WiderGroundTruth, iou_thresh: float = IOU_THRESH,
                         thresh_num: int = THRESH_NUM) -> dict:
    """Score predictions (one ``(N, 5)`` ``x y w h score`` array per ground-truth image, in ``gt`` order).

    Args:
        preds: Raw predictions; scores are normalised here.
        gt: The ground truth.
        iou_thresh: Match threshold.
        thresh_num: Number of score thresholds.

    Returns:
        ``{"easy", "medium", "hard", "mean"}`` AP as fractions, ``"curves"``: per subset ``{"precision",
        "recall"}`` arrays of ``thresh_num`` points (threshold order: high to low), ``"thresholds"``,
        ``"face_counts"`` and ``"num_images"``.
    """
    if len(preds) != len(gt):
        raise ValueError(f"got predictions for {len(preds)} images, the ground truth has {len(gt)}")
    preds = normalise_scores(preds)
    thr = thresholds(thresh_num)
    ascending = thr[::-1]

    # Setting-independent work per image: best ground-truth match of every prediction and its suffix-max score.
    best_parts, matched_parts, bin_parts, image_parts = [], [], [], []
    for i, (p, g) in enumerate(zip(preds, gt.boxes)):
        if len(p) == 0 or len(g) == 0:
            continue  # the port skips such images entirely (no proposals, no recall)
        ov = _overlaps(p[:, :4], g)
        best_parts.append(ov.argmax(axis=1))
        matched_parts.append(ov.max(axis=1) >= iou_thresh)
        suffix_max = np.maximum.accumulate(p[::-1, 4])[::-1]
        # First threshold index t whose threshold the prediction's suffix max reaches; thresh_num means none.
        bin_parts.append(thresh_num - np.searchsorted(ascending, suffix_max, side="right"))
        image_parts.append(np.full(len(p), i, np.int64))
    result: dict = {"curves": {}, "thresholds": thr, "face_counts": dict(gt.face_counts), "num_images": len(gt)}
    if best_parts:
        best = np.concatenate(best_parts)
        matched = np.concatenate(matched_parts)
        bins = np.concatenate(bin_parts)
        image = np.concatenate(image_parts)
    else:
        best = bins = image = np.zeros(0, np.int64)
        matched = np.zeros(0, bool)
    offsets = np.concatenate(([0], np.cumsum([len(g) for g in gt.boxes])))
    gt_index = offsets[image] + best  # global index of each prediction's best box

    for setting in SETTINGS:
        keep_all = np.concatenate(gt.keep[setting]) if gt.keep[setting] else np.zeros(0, bool)
        on_kept = matched & keep_all[gt_index] if len(gt_index) else matched
        proposal = ~(matched & ~on_kept)
        # A kept face is recalled by the first prediction (in file order) matched to it.
        first_hit = np.zeros(len(gt_index), bool)
        hits = np.flatnonzero(on_kept)
        if hits.size:
            _, first = np.unique(gt_index[hits], return_index=True)
            first_hit[hits[first]] = True
        n_prop = np.cumsum(np.bincount(bins[proposal], minlength=thresh_num + 1)[:thresh_num]).astype(np.float64)
        n_rec = np.cumsum(np.bincount(bins[first_hit], minlength=thresh_num + 1)[:thresh_num]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = n_rec / n_prop
            recall = n_rec / gt.face_counts[setting]
        result[setting] = voc_ap(recall, precision)
        result["curves"][setting] = {"precision": precision, "recall": recall}
    result["mean"] = float(np.mean([result[s] for s in SETTINGS]))
    return result


def unsorted_predictions(preds: list[np.ndarray]) -> list[int]:
    """Indices of the prediction arrays whose scores are not in descending order."""
    return [i for i, p in enumerate(preds) if len(p) > 1 and bool((np.diff(p[:, 4]) > 0).any())]


def sort_by_score(pred: np.ndarray) -> np.ndarray:
    """Rows of one image's predictions by descending score (stable: equal scores keep their file order)."""
    return pred[np.argsort(-pred[:, 4], kind="stable")]


def evaluate_folder(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, iou_thresh: float = IOU_THRESH,
                    sort_boxes: bool = True) -> dict:
    """Evaluate a prediction folder against the official ground truth.

    Args:
        pred_dir: ``PRED/<event>/<name>.txt`` files.
        gt_dir: Folder of the four official ``.mat`` files.
        iou_thresh: Match threshold (0.5 in the protocol).
        sort_boxes: Sort the boxes of files not listed by descending score (what the protocol assumes) before
            scoring; False scores them in file order as the official tools do. A warning names such files either way.

    Returns:
        The dict of :func:`evaluate_predictions` plus ``"missing"``: the number of val images without a
        prediction file (each counted as zero detections; a warning reports the count once), and ``"unsorted"``:
        the number of files not sorted by descending score.

    Raises:
        FaceNASError: See :func:`load_ground_truth` and :func:`read_prediction_folder`.
    """
    gt = load_ground_truth(gt_dir)
    preds, missing = read_prediction_folder(pred_dir, gt)
    if missing:
        warnings.warn(f"{pred_dir}: {missing} of {len(gt)} val images have no prediction file; counted as zero "
                      "detections", UserWarning, stacklevel=2)
    unsorted = unsorted_predictions(preds)
    if unsorted:
        first = Path(pred_dir) / gt.events[unsorted[0]] / f"{gt.names[unsorted[0]]}.txt"
        done = ("sorted them by descending score before scoring, as the protocol assumes (keep_file_order / "
                "--keep-file-order scores the file order, as the official tools do)") if sort_boxes else \
            "scored them in file order, as the official tools do; the protocol assumes descending scores"
        warnings.warn(f"{first}: boxes not listed by descending score ({len(unsorted)} of {len(preds)} prediction "
                      f"files are like this); {done}", UserWarning, stacklevel=2)
        if sort_boxes:
            for i in unsorted:
                preds[i] = sort_by_score(preds[i])
    result = evaluate_predictions(preds, gt, iou_thresh)
    result["missing"] = missing
    result["unsorted"] = len(unsorted)
    return result


def format_prediction_text(name: str, boxes_xywh: np.ndarray, scores: np.ndarray) -> str:
    """Format one prediction file, boxes sorted by descending score (what the protocol assumes).

    Args:
        name: Image name written on the first line (the evaluator checks it against the file name).
        boxes_xywh: ``(N, 4)`` ``x, y, w, h`` in original-image pixels.
        scores: ``(N,)`` confidences.

    Returns:
        The file text.
    """
    boxes_xywh = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    lines = [name, str(len(order))]
    lines += [f"{x:.2f} {y:.2f} {w:.2f} {h:.2f} {s:.6f}" for (x, y, w, h), s in zip(boxes_xywh[order], scores[order])]
    return "\n".join(lines) + "\n"


def write_prediction_file(pred_dir: str | os.PathLike, event: str, name: str, boxes_xywh: np.ndarray,
                          scores: np.ndarray) -> Path:
    """Write ``pred_dir/<event>/<name>.txt`` (plain write: thousands of small files, re-creatable).

    Returns:
        The file path.
    """
    path = Path(pred_dir) / event / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_prediction_text(name, boxes_xywh, scores), encoding="utf-8")
    return path


def plot_pr_curves(results: Mapping | Sequence[tuple[str, Mapping]], path: str | os.PathLike,
                   title: str | None = None) -> None:
    """Precision-recall curves as the official WIDER FACE toolbox draws them: one panel per setting (Easy, Medium,
    Hard), one curve per prediction folder, labelled with its AP and listed best first. PNG, atomic write.

    Args:
        results: one result of :func:`evaluate_folder` / :func:`evaluate_predictions`, or ``(label, result)`` pairs
            to overlay (e.g. one per model).
        path: output ``.png`` file.
        title: figure title, e.g. the model; default "WIDER FACE val" followed by the labels.
    """
    runs = [("predictions", results)] if isinstance(results, Mapping) else list(results)
    if not runs:
        raise FaceNASError("plot_pr_curves: no results to plot")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5.2 * len(SETTINGS), 5.0), sharey=True)
    for ax, setting in zip(axes, SETTINGS):
        for label, result in sorted(runs, key=lambda run: -np.nan_to_num(run[1][setting], nan=-1.0)):
            curve = result["curves"][setting]
            ax.plot(curve["recall"], curve["precision"], lw=1.6, label=f"{label} (AP {100 * result[setting]:.2f}%)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        faces = runs[0][1].get("face_counts", {}).get(setting)
        ax.set_title(setting.capitalize() + (f" ({faces} faces)" if faces is not None else ""))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("precision")
    names = ", ".join(label for label, _ in runs)
    fig.suptitle(title or f"WIDER FACE val: {names}")
    fig.tight_layout()
    save_figure(fig, path, tight=True)
