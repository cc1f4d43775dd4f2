"""Benchmark: the vectorised WIDER FACE evaluator (data/wider_eval.py) against a plain-Python reference.

Writes a val-sized synthetic prediction set for a ground-truth folder (default: the real WIDER FACE val .mat files
in /work/shared/data/widerface_val_gt): about two predictions per face, jittered copies of true boxes plus false
positives, random scores, one file per image sorted by descending score. Then it times

(a) ``reference_evaluation`` below: a straightforward pure-Python re-implementation of the widely used port of the
    official evaluation (``widerface_evaluate/evaluation.py``), loops as in that port, with a Python loop in place
    of its Cython IoU extension (which does not build on NumPy 2);
(b) ``data.wider_eval.evaluate_folder``;

checks that the three APs agree to 1e-9 and prints a Markdown table row.

Usage: ``python bench/bench_evaluator.py [--gt-dir DIR] [--seed N] [--keep DIR]``
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.wider_eval import load_ground_truth, write_prediction_file  # noqa: E402
from utils.errors import FaceNASError, run_cli  # noqa: E402

DEFAULT_GT_DIR = "/work/shared/data/widerface_val_gt"


# ---------------------------------------------------------------------------------------------------------------------
# REFERENCE: plain-Python re-implementation of the usual port of the official evaluation. Deliberately unoptimised:
# the loops below follow the port step by step, so its numbers are the ones to match.
# ---------------------------------------------------------------------------------------------------------------------


def reference_iou(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU (N, K) of x1 y1 x2 y2 boxes with the +1 pixel convention, element by element (the Cython kernel)."""
    out = np.zeros((boxes.shape[0], query.shape[0]), dtype=np.float64)
    for k in range(query.shape[0]):
        query_area = (query[k, 2] - query[k, 0] + 1) * (query[k, 3] - query[k, 1] + 1)
        for n in range(boxes.shape[0]):
            iw = min(boxes[n, 2], query[k, 2]) - max(boxes[n, 0], query[k, 0]) + 1
            if iw > 0:
                ih = min(boxes[n, 3], query[k, 3]) - max(boxes[n, 1], query[k, 1]) + 1
                if ih > 0:
                    union = float((boxes[n, 2] - boxes[n, 0] + 1) * (boxes[n, 3] - boxes[n, 1] + 1)
                                  + query_area - iw * ih)
                    out[n, k] = iw * ih / union
    return out


def _reference_read_predictions(pred_dir: str) -> dict:
    """All prediction files as {event: {name: array (N, 5)}}, keyed by the name written on line 1."""
    preds: dict = {}
    for event in os.listdir(pred_dir):
        per_event = {}
        for file in os.listdir(os.path.join(pred_dir, event)):
            with open(os.path.join(pred_dir, event, file)) as handle:
                lines = handle.readlines()
            name = lines[0].rstrip("\r\n").split("/")[-1]
            rows = []
            for line in lines[2:]:
                fields = line.rstrip("\r\n").split(" ")
                if fields[0] == "":
                    continue
                rows.append([float(fields[0]), float(fields[1]), float(fields[2]), float(fields[3]), float(fields[4])])
            per_event[name[:-4] if name.endswith(".jpg") else name] = np.array(rows)
        preds[event] = per_event
    return preds


def _reference_normalise(preds: dict) -> None:
    top, bottom = 0, 1  # the port's starting values
    for per_event in preds.values():
        for boxes in per_event.values():
            if len(boxes) == 0:
                continue
            top = max(np.max(boxes[:, -1]), top)
            bottom = min(np.min(boxes[:, -1]), bottom)
    span = top - bottom
    for per_event in preds.values():
        for boxes in per_event.values():
            if len(boxes) == 0:
                continue
            boxes[:, -1] = (boxes[:, -1] - bottom) / span


def compiled_like_iou(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Array version of :func:`reference_iou` (same arithmetic), standing in for the port's compiled kernel."""
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    query_area = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), iw * ih / (area[:, None] + query_area[None, :] - iw * ih), 0.0)


IOU_KERNELS = {"python": reference_iou, "array": compiled_like_iou}


def _reference_image(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray, iou_thresh: float, iou=reference_iou):
    pred_c = pred.copy()
    gt_c = gt.copy()
    pred_recall = np.zeros(pred_c.shape[0])
    recall_list = np.zeros(gt_c.shape[0])
    proposal_list = np.ones(pred_c.shape[0])
    pred_c[:, 2] = pred_c[:, 2] + pred_c[:, 0]
    pred_c[:, 3] = pred_c[:, 3] + pred_c[:, 1]
    gt_c[:, 2] = gt_c[:, 2] + gt_c[:, 0]
    gt_c[:, 3] = gt_c[:, 3] + gt_c[:, 1]
    overlaps = iou(pred_c[:, :4], gt_c)
    for h in range(pred_c.shape[0]):
        row = overlaps[h]
        best_iou, best = row.max(), row.argmax()
        if best_iou >= iou_thresh:
            if ignore[best] == 0:
                recall_list[best] = -1
                proposal_list[h] = -1
            elif recall_list[best] == 0:
                recall_list[best] = 1
        pred_recall[h] = len(np.where(recall_list == 1)[0])
    return pred_recall, proposal_list


def _reference_image_pr(thresh_num: int, pred: np.ndarray, proposal_list: np.ndarray,
                        pred_recall: np.ndarray) -> np.ndarray:
    info = np.zeros((thresh_num, 2)).astype("float")
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        above = np.where(pred[:, 4] >= thresh)[0]
        if len(above) == 0:
            info[t, 0] = 0
            info[t, 1] = 0
        else:
            last = above[-1]
            info[t, 0] = len(np.where(proposal_list[:last + 1] == 1)[0])
            info[t, 1] = pred_recall[last]
    return info


def _reference_voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def reference_evaluation(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, iou_thresh: float = 0.5,
                         iou_kernel: str = "python") -> tuple[float, float, float]:
    """REFERENCE (slow, for checking): Easy, Medium, Hard AP exactly as the usual port computes them.

    Like the port it needs a prediction file for every val image (KeyError otherwise). ``iou_kernel="array"``
    swaps the element-by-element IoU loop for an array version, which approximates the port run with its compiled
    (Cython) IoU; everything else stays a Python loop.
    """
    iou = IOU_KERNELS[iou_kernel]
    from scipy.io import loadmat

    pred = _reference_read_predictions(str(pred_dir))
    _reference_normalise(pred)
    full = loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    subsets = [loadmat(os.path.join(gt_dir, f"wider_{s}_val.mat"))["gt_list"] for s in ("easy", "medium", "hard")]
    facebox_list, event_list, file_list = full["face_bbx_list"], full["event_list"], full["file_list"]
    thresh_num = 1000
    aps = []
    for gt_list in subsets:
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2)).astype("float")
        for i in range(len(event_list)):
            event_name = str(event_list[i][0][0])
            img_list = file_list[i][0]
            pred_list = pred[event_name]
            sub_gt_list = gt_list[i][0]
            gt_bbx_list = facebox_list[i][0]
            for j in range(len(img_list)):
                pred_info = pred_list[str(img_list[j][0][0])]
                gt_boxes = gt_bbx_list[j][0].astype("float")
                keep_index = sub_gt_list[j][0]
                count_face += len(keep_index)
                if len(gt_boxes) == 0 or len(pred_info) == 0:
                    continue
                ignore = np.zeros(gt_boxes.shape[0])
                if len(keep_index) != 0:
                    ignore[keep_index - 1] = 1
                pred_recall, proposal_list = _reference_image(pred_info, gt_boxes, ignore, iou_thresh, iou)
                pr_curve += _reference_image_pr(thresh_num, pred_info, proposal_list, pred_recall)
        curve = np.zeros((thresh_num, 2))
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 -> NaN at thresholds without proposals
            for t in range(thresh_num):
                curve[t, 0] = pr_curve[t, 1] / pr_curve[t, 0]
                curve[t, 1] = pr_curve[t, 1] / count_face
        aps.append(_reference_voc_ap(curve[:, 1], curve[:, 0]))
    return aps[0], aps[1], aps[2]


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark driver.
# ---------------------------------------------------------------------------------------------------------------------


def write_synthetic_predictions(gt_dir: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0,
                                per_face: float = 2.0) -> tuple[int, int, int]:
    """Write a prediction file for every val image of ``gt_dir``: about ``per_face`` boxes per face.

    About 80 % of the faces get a jittered copy of their box (score drawn high-ish), some a second, looser copy;
    the rest of the budget is false positives (random boxes near the faces' scale, score drawn low-ish).

    Returns:
        ``(images, faces, predictions)``.
    """
    gt = load_ground_truth(gt_dir)
    rng = np.random.default_rng(seed)
    n_pred = 0
    n_faces = 0
    for event, name, boxes in zip(gt.events, gt.names, gt.boxes):
        n = len(boxes)
        n_faces += n
        found = boxes[rng.random(n) < 0.8]
        jitter = rng.normal(0, 0.08, found.shape) * np.repeat(np.maximum(found[:, 2:4], 1), 2, axis=1)
        true_pos = found + jitter
        doubles = found[rng.random(len(found)) < 0.25]
        doubles = doubles + rng.normal(0, 0.25, doubles.shape) * np.repeat(np.maximum(doubles[:, 2:4], 1), 2, axis=1)
        n_false = max(0, int(round(per_face * n)) - len(true_pos) - len(doubles))
        if n:
            centre = boxes[rng.integers(0, n, n_false), :2] + rng.normal(0, 60, (n_false, 2))
            size = np.exp(rng.uniform(np.log(4), np.log(200), (n_false, 1))) * np.array([[1.0, 1.2]])
            false_pos = np.concatenate([centre, size], axis=1)
        else:
            false_pos = np.zeros((0, 4))
        all_boxes = np.concatenate([true_pos, doubles, false_pos])
        all_boxes[:, 2:] = np.maximum(all_boxes[:, 2:], 1)
        scores = np.concatenate([rng.beta(5, 2, len(true_pos)), rng.beta(2, 3, len(doubles)),
                                 rng.beta(2, 5, len(false_pos))])
        write_prediction_file(out_dir, event, name, all_boxes, scores)
        n_pred += len(all_boxes)
    return len(gt), n_faces, n_pred


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}, NumPy {np.__version__}"


def main() -> None:
    """Parse arguments, build the prediction set, time both evaluators and print the table row."""
    import warnings

    from data.wider_eval import evaluate_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--gt-dir", default=DEFAULT_GT_DIR, help="folder of the four official val .mat files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic predictions")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the vectorised evaluator (median reported)")
    parser.add_argument("--keep", default=None, help="write the predictions here and keep them (default: temp dir)")
    parser.add_argument("--reference-iou", choices=sorted(IOU_KERNELS), default="python",
                        help="IoU kernel of the reference: 'python' loops (pure-Python port) or 'array' (stands in "
                             "for the port's compiled Cython kernel)")
    args = parser.parse_args()
    if not Path(args.gt_dir, "wider_face_val.mat").is_file():
        raise FaceNASError(f"{args.gt_dir}: no wider_face_val.mat here; pass --gt-dir")
    with tempfile.TemporaryDirectory(prefix="facenas-bench-") as tmp:
        pred_dir = Path(args.keep) if args.keep else Path(tmp) / "pred"
        images, faces, preds = write_synthetic_predictions(args.gt_dir, pred_dir, args.seed)
        print(f"predictions: {images} images, {faces} faces, {preds} boxes in {pred_dir}", file=sys.stderr)
        times = []
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = evaluate_folder(pred_dir, args.gt_dir)
            times.append(time.perf_counter() - start)
        fast_s = float(np.median(times))
        print(f"vectorised: {fast_s:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})", file=sys.stderr)
        start = time.perf_counter()
        ref = reference_evaluation(pred_dir, args.gt_dir, iou_kernel=args.reference_iou)
        ref_s = time.perf_counter() - start
        print(f"reference ({args.reference_iou} IoU):  {ref_s:.2f} s", file=sys.stderr)
    diffs = [abs(fast[s] - r) for s, r in zip(("easy", "medium", "hard"), ref)]
    same = max(diffs) <= 1e-9
    print(f"AP easy/medium/hard: vectorised {fast['easy']:.12f} {fast['medium']:.12f} {fast['hard']:.12f}; "
          f"reference {ref[0]:.12f} {ref[1]:.12f} {ref[2]:.12f}; max |diff| {max(diffs):.3g}", file=sys.stderr)
    print(f"| machine | date | images / faces / predictions | reference, {args.reference_iou} IoU (s) | "
          "vectorised (s) | speed-up | identical APs |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {_machine()} | {datetime.date.today().isoformat()} | {images} / {faces} / {preds} | {ref_s:.1f} | "
          f"{fast_s:.2f} | {ref_s / fast_s:.0f}x | {'yes' if same else 'NO'} (max diff {max(diffs):.1e}) |")
    if not same:
        raise FaceNASError("the vectorised evaluator disagrees with the reference; see the AP line above")


if __name__ == "__main__":
    run_cli(main)
