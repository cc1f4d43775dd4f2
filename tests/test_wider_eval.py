"""The WIDER FACE evaluator: hand-computed AP cases, the port's semantics, agreement with the plain-Python
reference, error handling, the evaluate.py script."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from bench.bench_evaluator import reference_evaluation
from data.wider_eval import (
    evaluate_folder,
    load_ground_truth,
    normalise_scores,
    parse_prediction_text,
    plot_pr_curves,
    voc_ap,
)
from utils.errors import FaceNASError

REPO = Path(__file__).resolve().parents[1]
REAL_GT = Path("/work/shared/data/widerface_val_gt")


def cells(items: list) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    for k, item in enumerate(items):
        out[k, 0] = item
    return out


def write_gt(gt_dir: Path, images: list[tuple[str, str, list, dict]]) -> Path:
    """Write the four official .mat files with scipy.io.savemat in the official nested-cell structure.

    ``images``: ``(event, name, boxes [[x, y, w, h], ...], {"easy": [1-based...], "medium": [...], "hard": [...]})``,
    grouped by event in order.
    """
    gt_dir.mkdir(parents=True, exist_ok=True)
    events: list[str] = []
    for event, *_ in images:
        if event not in events:
            events.append(event)
    per_event = [[img for img in images if img[0] == event] for event in events]
    base = {
        "event_list": cells(events),
        "file_list": cells([cells([name for _, name, _, _ in group]) for group in per_event]),
        "face_bbx_list": cells([cells([np.asarray(boxes, np.int32).reshape(-1, 4) for _, _, boxes, _ in group])
                                for group in per_event]),
        "blur_label_list": cells([cells([np.zeros((len(boxes), 1), np.uint8) for _, _, boxes, _ in group])
                                  for group in per_event]),
    }
    scipy.io.savemat(gt_dir / "wider_face_val.mat", base)
    for setting in ("easy", "medium", "hard"):
        lists = cells([cells([np.asarray(keep[setting], np.uint8).reshape(-1, 1) for _, _, _, keep in group])
                       for group in per_event])
        scipy.io.savemat(gt_dir / f"wider_{setting}_val.mat", {**base, "gt_list": lists})
    return gt_dir


def write_pred(pred_dir: Path, event: str, name: str, rows: list) -> None:
    path = pred_dir / event / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}.jpg", str(len(rows))] + [" ".join(f"{v:g}" for v in row) + " " for row in rows]
    path.write_text("\n".join(lines) + "\n")


ALL = {"easy": [1, 2], "medium": [1, 2], "hard": [1, 2]}
ONE = {"easy": [1], "medium": [1], "hard": [1]}
A = [0, 0, 100, 100]
B = [200, 0, 100, 100]


def run(tmp_path: Path, images: list, preds: dict) -> dict:
    gt_dir = write_gt(tmp_path / "gt", images)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir(exist_ok=True)
    for (event, name), rows in preds.items():
        write_pred(pred_dir, event, name, rows)
    return evaluate_folder(pred_dir, gt_dir)


# ------------------------------------------------------------------------------------------------- hand-computed APs


def test_perfect_detector_scores_one(tmp_path):
    images = [("0--a", "x", [A, B], {"easy": [1], "medium": [1, 2], "hard": [1, 2]}),
              ("1--b", "y", [[10, 10, 40, 50]], {"easy": [], "medium": [1], "hard": [1]})]
    preds = {("0--a", "x"): [A + [0.9], B + [0.6]], ("1--b", "y"): [[10, 10, 40, 50, 0.3]]}
    result = run(tmp_path, images, preds)
    for setting in ("easy", "medium", "hard"):
        assert result[setting] == pytest.approx(1.0, abs=1e-12)
    assert result["mean"] == pytest.approx(1.0, abs=1e-12)
    assert result["face_counts"] == {"easy": 1, "medium": 3, "hard": 3}
    assert result["missing"] == 0


def test_hand_computed_false_positive_case(tmp_path):
    # Normalised scores 1.0 (hit A), 0.5 (miss), 0.0 (hit B): points (R 0.5, P 1), (0.5, 0.5), (1, 2/3);
    # envelope -> AP = 0.5 * 1 + 0.5 * 2/3.
    images = [("0--a", "x", [A, B], ALL)]
    result = run(tmp_path, images, {("0--a", "x"): [A + [0.9], [500, 500, 20, 20, 0.8], B + [0.7]]})
    assert result["hard"] == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    curve = result["curves"]["hard"]
    assert curve["precision"][-1] == pytest.approx(2 / 3) and curve["recall"][-1] == 1.0


def test_score_normalisation_follows_the_port(tmp_path):
    images = [("0--a", "x", [A, B], ALL)]
    for scores in ([0.9, 0.8, 0.7], [50, 40, 30], [0.5, 0.4, 0.3]):
        rows = [A + [scores[0]], [500, 500, 20, 20, scores[1]], B + [scores[2]]]
        assert run(tmp_path, images, {("0--a", "x"): rows})["hard"] == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    # The range starts at min 1 / max 0: scores 2 and 3 map to (s - 1) / 2, scores in [0.2, 0.6] to themselves
    # stretched over [0.2, 0.6].
    out = normalise_scores([np.array([[0, 0, 1, 1, 2.0], [0, 0, 1, 1, 3.0]])])
    np.testing.assert_allclose(out[0][:, 4], [0.5, 1.0])
    out = normalise_scores([np.array([[0, 0, 1, 1, 0.2]]), np.zeros((0, 5)), np.array([[0, 0, 1, 1, 0.6]])])
    np.testing.assert_allclose([out[0][0, 4], out[2][0, 4]], [0.0, 1.0])
    # Equal scores (the port divides by zero) all become 1.
    out = normalise_scores([np.array([[0, 0, 1, 1, 0.7], [0, 0, 1, 1, 0.7]])])
    np.testing.assert_array_equal(out[0][:, 4], [1.0, 1.0])


def test_detections_on_ignored_faces_are_neither_true_nor_false(tmp_path):
    images = [("0--a", "x", [A, B], {"easy": [1], "medium": [1, 2], "hard": [1, 2]})]
    # Highest score on B, which Easy ignores. Counting it as a false positive would give Easy AP 0.5.
    result = run(tmp_path, images, {("0--a", "x"): [B + [0.9], A + [0.5]]})
    assert result["easy"] == pytest.approx(1.0, abs=1e-12)
    assert result["hard"] == pytest.approx(1.0, abs=1e-12)


def test_best_match_on_an_ignored_face_hides_a_kept_face(tmp_path):
    # The detection overlaps kept A with IoU ~0.9 but ignored C exactly: the port matches the best box only, so the
    # detection is ignored and A is not recalled in Easy.
    c_box = [10, 0, 90, 100]
    images = [("0--a", "x", [A, c_box], {"easy": [1], "medium": [1, 2], "hard": [1, 2]})]
    result = run(tmp_path, images, {("0--a", "x"): [c_box + [0.9]]})
    assert result["easy"] == 0.0
    assert result["hard"] == pytest.approx(0.5, abs=1e-12)


def test_second_detection_of_a_face_is_a_false_positive(tmp_path):
    images = [("0--a", "x", [A, B], {"easy": [2], "medium": [1, 2], "hard": [1, 2]})]
    # Two detections of A, B missed. Hard: (R 0.5, P 1) then (R 0.5, P 0.5) -> AP 0.5.
    # Easy keeps only B: both detections sit on ignored A -> no proposals, no recall -> AP 0.
    result = run(tmp_path, images, {("0--a", "x"): [A + [0.9], [2, 1, 98, 99, 0.8]]})
    assert result["hard"] == pytest.approx(0.5, abs=1e-12)
    assert result["easy"] == 0.0
    prec = result["curves"]["hard"]["precision"]
    assert prec[0] == 1.0 and prec[-1] == 0.5


def test_missing_and_empty_prediction_files_count_as_no_detections(tmp_path):
    images = [("0--a", "x", [A], {"easy": [1], "medium": [1], "hard": [1]}),
              ("0--a", "y", [B], {"easy": [1], "medium": [1], "hard": [1]}),
              ("1--b", "z", [], {"easy": [], "medium": [], "hard": []})]
    with pytest.warns(UserWarning, match="2 of 3 val images have no prediction file"):
        result = run(tmp_path, images, {("0--a", "x"): [A + [0.9]]})
    assert result["hard"] == pytest.approx(0.5, abs=1e-12) and result["missing"] == 2
    # An empty file is not "missing"; detections on an image without faces are skipped, as in the port.
    preds = {("0--a", "x"): [A + [0.9]], ("0--a", "y"): [], ("1--b", "z"): [[1, 1, 10, 10, 0.95]]}
    result = run(tmp_path, images, preds)
    assert result["hard"] == pytest.approx(0.5, abs=1e-12) and result["missing"] == 0


def test_voc_ap_envelope():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 1 / 3)
    assert voc_ap(np.array([0.0, 0.0]), np.array([np.nan, np.nan])) == 0.0


# -------------------------------------------------------------------------------------------- agreement with the port


def random_case(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images = []
    preds = {}
    for i in range(30):
        event = f"{i % 3}--ev{i % 3}"
        n = int(rng.integers(0, 12))
        xy = rng.integers(0, 400, (n, 2))
        wh = np.exp(rng.uniform(np.log(3), np.log(120), (n, 2))).astype(int)
        boxes = np.concatenate([xy, wh], axis=1)
        hard = [k + 1 for k in range(n) if rng.random() < 0.85]
        medium = [k for k in hard if rng.random() < 0.7]
        easy = [k for k in medium if rng.random() < 0.6]
        images.append((event, f"img_{i}", boxes.tolist(), {"easy": easy, "medium": medium, "hard": hard}))
        rows = []
        for box in boxes:
            for _ in range(int(rng.integers(0, 3))):  # zero, one or two detections per face
                jittered = box + rng.normal(0, 0.15, 4) * np.repeat(box[2:], 2)
                jittered[2:] = np.maximum(jittered[2:], 1)
                rows.append(list(np.round(jittered, 1)) + [round(float(rng.random()), 4)])
        for _ in range(int(rng.integers(0, 6))):
            rows.append([*np.round(rng.uniform(0, 400, 2), 1), *np.round(rng.uniform(2, 100, 2), 1),
                         round(float(rng.random()), 4)])
        rng.shuffle(rows)  # deliberately not sorted by score: the port's file-order semantics must match too
        preds[(event, f"img_{i}")] = rows
    images.sort(key=lambda img: img[0])
    gt_dir = write_gt(tmp_path / f"gt{seed}", images)
    pred_dir = tmp_path / f"pred{seed}"
    for (event, name), rows in preds.items():
        write_pred(pred_dir, event, name, rows)
    return gt_dir, pred_dir


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_plain_python_reference(tmp_path, seed):
    gt_dir, pred_dir = random_case(tmp_path, seed)
    with pytest.warns(UserWarning, match="not listed by descending score"):
        fast = evaluate_folder(pred_dir, gt_dir, sort_boxes=False)  # the port's file order
    ref = reference_evaluation(pred_dir, gt_dir)
    assert (fast["easy"], fast["medium"], fast["hard"]) == pytest.approx(ref, abs=1e-12)
    assert 0 < fast["hard"] < 1


def test_unsorted_prediction_files_are_sorted_first_with_one_warning(tmp_path):
    gt_dir, pred_dir = random_case(tmp_path, 0)
    with pytest.warns(UserWarning, match="boxes not listed by descending score") as caught:
        default = evaluate_folder(pred_dir, gt_dir)
    assert len([w for w in caught if "descending" in str(w.message)]) == 1
    assert default["unsorted"] > 0
    # the same as the port's numbers on files that were sorted on disk
    for path in pred_dir.rglob("*.txt"):
        lines = path.read_text().splitlines()
        rows = sorted((line for line in lines[2:] if line.strip()), key=lambda r: -float(r.split()[4]))
        path.write_text("\n".join(lines[:2] + rows) + "\n")
    ref = reference_evaluation(pred_dir, gt_dir)
    assert (default["easy"], default["medium"], default["hard"]) == pytest.approx(ref, abs=1e-12)
    assert evaluate_folder(pred_dir, gt_dir)["unsorted"] == 0


@pytest.mark.skipif(not (REAL_GT / "wider_face_val.mat").is_file(), reason="real WIDER FACE val .mat not present")
def test_reads_the_real_ground_truth_structure():
    gt = load_ground_truth(REAL_GT)
    assert len(gt) == 3226 and sum(len(b) for b in gt.boxes) == 39708
    assert gt.face_counts == {"easy": 7211, "medium": 13319, "hard": 31958}
    assert gt.events[0] == "0--Parade" and gt.names[0] == "0_Parade_marchingband_1_465"
    for i in range(0, len(gt), 97):
        assert not (gt.keep["easy"][i] & ~gt.keep["medium"][i]).any()


# ----------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("", 1, "image name"),
    ("x.jpg\n", 2, "before the box count"),
    ("x.jpg\ntwo\n", 2, "expected the number of boxes"),
    ("x.jpg\n2\n1 2 3 4 0.5\n", 4, "expected 2 box lines, found 1"),
    ("x.jpg\n1\n1 2 3 4 0.5\n1 2 3 4 0.5\n", 4, "more box lines than the count"),
    ("x.jpg\n1\n1 2 3 4\n", 3, "expected 5 numbers"),
    ("x.jpg\n2\n1 2 3 4 0.5\n1 2 3 four 0.5\n", 4, "'four' is not a number"),
    ("x.jpg\n1\n1 2 -3 4 0.5\n", 3, "negative width"),
    ("x.jpg\n1\n1 2 3 4 nan\n", 3, "non-finite"),
    ("other.jpg\n0\n", 1, "names image 'other.jpg'"),
])
def test_malformed_prediction_files(text, line, fragment):
    with pytest.raises(FaceNASError) as excinfo:
        parse_prediction_text(text, "P/ev/x.txt", expected_name="x")
    message = str(excinfo.value)
    assert message.startswith(f"P/ev/x.txt:{line}:") and fragment in message and "\n" not in message


def test_prediction_parser_accepts_official_style():
    rows = parse_prediction_text("ev/x.jpg\n2\n1 2 3 4 0.9 \n\n5 6 7 8 0.1\n", "f", expected_name="x")
    np.testing.assert_array_equal(rows, [[1, 2, 3, 4, 0.9], [5, 6, 7, 8, 0.1]])


def test_malformed_file_in_folder_names_file_and_line(tmp_path):
    gt_dir = write_gt(tmp_path / "gt", [("0--a", "x", [A], ONE)])
    (tmp_path / "pred" / "0--a").mkdir(parents=True)
    (tmp_path / "pred" / "0--a" / "x.txt").write_text("x\n1\n1 2 3\n")
    with pytest.raises(FaceNASError, match=r"x\.txt:3: expected 5 numbers"):
        evaluate_folder(tmp_path / "pred", gt_dir)


def test_missing_gt_file_and_wrong_folder(tmp_path):
    with pytest.raises(FaceNASError, match="wider_face_val.mat: not found"):
        load_ground_truth(tmp_path)
    gt_dir = write_gt(tmp_path / "gt", [("0--a", "x", [A], ONE)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaceNASError, match="none of the 1 val images"):
        evaluate_folder(tmp_path / "empty", gt_dir)
    bad = write_gt(tmp_path / "bad", [("0--a", "x", [A], {"easy": [3], "medium": [1], "hard": [1]})])
    with pytest.raises(FaceNASError, match="outside 1..1"):
        load_ground_truth(bad)


# ----------------------------------------------------------------------------------------------- plot and script


def test_plot_and_evaluate_script(tmp_path):
    images = [("0--a", "x", [A, B], ALL)]
    gt_dir = write_gt(tmp_path / "gt", images)
    write_pred(tmp_path / "pred", "0--a", "x", [A + [0.9], [500, 500, 20, 20, 0.8], B + [0.7]])
    result = evaluate_folder(tmp_path / "pred", gt_dir)
    plot_pr_curves(result, tmp_path / "pr.png")
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    sys.path.insert(0, str(REPO))
    import evaluate

    assert evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(gt_dir), "--json",
                          str(tmp_path / "ap.json"), "--plot", str(tmp_path / "cli.png")]) == 0
    saved = json.loads((tmp_path / "ap.json").read_text())
    assert saved["hard"] == pytest.approx(0.5 + 1 / 3) and saved["mean"] == pytest.approx(0.5 + 1 / 3)
    assert {"easy", "medium", "hard", "mean"} <= saved.keys() and (tmp_path / "cli.png").is_file()


def test_evaluate_script_errors_are_one_line(tmp_path):
    gt_dir = write_gt(tmp_path / "gt", [("0--a", "x", [A], ONE)])
    (tmp_path / "pred" / "0--a").mkdir(parents=True)
    (tmp_path / "pred" / "0--a" / "x.txt").write_text("x\nmany\n")
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--pred-dir", str(tmp_path / "pred"),
                           "--gt-dir", str(gt_dir)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "x.txt:2:" in proc.stderr
