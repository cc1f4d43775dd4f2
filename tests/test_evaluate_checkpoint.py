"""evaluate.py --checkpoint / --latency, the inference helpers, checkpoint checks and tools/detect.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import models
from engine.checkpoint import load_detector, model_spec, save_checkpoint
from engine.inference import EvalSettings, predict_to_folder, preprocess, scale_for_test
from utils.errors import FaceNASError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_eval") / "data"
    generate_dataset(root, SyntheticConfig(num_train=2, num_val=4, min_side=64, max_side=160, seed=12))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    detector = models.build_detector("R12_V3_HS")
    path = tmp_path_factory.mktemp("ckpt") / "run" / "last.pth"
    save_checkpoint(path, model=detector, spec=model_spec("R12_V3_HS"), fpn_channels=detector.fpn_channels, epoch=4)
    return path


def _read_prediction(path: Path) -> tuple[str, np.ndarray]:
    lines = path.read_text().splitlines()
    count = int(lines[1])
    assert len(lines) == 2 + count
    rows = np.array([[float(v) for v in line.split()] for line in lines[2:]]).reshape(count, 5)
    return lines[0], rows


def test_checkpoint_mode_writes_a_file_per_val_image_and_scores_it(tiny_root, checkpoint, tmp_path, capsys):
    from data.widerface import list_val_images

    pred = tmp_path / "pred"
    out_json = tmp_path / "ap.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data-root", str(tiny_root), "--pred-dir", str(pred),
                          "--json", str(out_json), "--device", "cpu"]) == 0
    images = list_val_images(tiny_root)
    assert len(images) == 4
    for event, name in images:
        first, rows = _read_prediction(pred / event / f"{name}.txt")
        assert first == name
        assert len(rows) <= 750
        assert np.all(np.diff(rows[:, 4]) <= 0) and np.all(rows[:, 4] > 0.02)  # descending scores above 0.02
    result = json.loads(out_json.read_text())
    assert {"easy", "medium", "hard", "mean"} <= set(result)
    assert "epoch 5" in capsys.readouterr().out


def test_default_pred_dir_is_next_to_the_checkpoint(checkpoint):
    assert evaluate.default_pred_dir(checkpoint) == checkpoint.resolve().parent / "widerface_val"
    assert evaluate.default_pred_dir(checkpoint, 1600).name == "widerface_val_s1600"


class _OracleDetector(torch.nn.Module):
    """A perfect detector: returns the next image's ground-truth boxes, scaled into the network input."""

    def __init__(self, boxes_xyxy: list[np.ndarray], heights: list[int]):
        super().__init__()
        self.boxes, self.heights, self.calls = boxes_xyxy, heights, 0

    def detect(self, images, **kwargs):
        boxes = torch.as_tensor(self.boxes[self.calls], dtype=torch.float32)
        scale = images.shape[-2] / self.heights[self.calls]
        self.calls += 1
        n = len(boxes)
        return [{"boxes": boxes * scale, "scores": torch.linspace(0.99, 0.9, n), "landmarks": torch.zeros(n, 10)}]


@pytest.mark.parametrize("test_size", [0, 150])
def test_predictions_are_in_original_pixels_at_any_test_scale(tiny_root, tmp_path, test_size):
    """A perfect detector scores AP 1 on every subset: boxes come back in original-image coordinates."""
    from data.wider_eval import evaluate_folder, load_ground_truth
    from data.widerface import WiderFaceValImages

    gt = load_ground_truth(tiny_root / "ground_truth")
    val = WiderFaceValImages(tiny_root)
    assert [(e, n) for e, n in zip(gt.events, gt.names)] == val.items
    boxes = [np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1) for b in gt.boxes]
    heights = [image.shape[0] for image, _, _ in val]
    detector = _OracleDetector(boxes, heights)
    pred = tmp_path / "pred"
    predict_to_folder(detector, val, pred, EvalSettings(test_size=test_size), progress=False)
    assert detector.calls == len(val)
    result = evaluate_folder(pred, tiny_root / "ground_truth")
    assert min(result["face_counts"].values()) > 0
    for setting in ("easy", "medium", "hard"):
        assert result[setting] == pytest.approx(1.0, abs=1e-6), (setting, result[setting])


def test_test_scale_follows_the_reference():
    assert scale_for_test(480, 640, 0) == 1.0
    assert scale_for_test(480, 640, 1600) == pytest.approx(1600 / 480)
    assert scale_for_test(400, 1200, 1600) == pytest.approx(2150 / 1200)  # long side capped
    x = preprocess(np.full((10, 20, 3), 104, np.uint8), 2.0)
    assert x.shape == (1, 3, 20, 40) and float(x[0, 0].abs().max()) == 0.0


def test_mismatched_or_foreign_checkpoints_are_reported_with_the_file(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    broken = tmp_path / "broken.pth"
    torch.save(ckpt, broken)
    with pytest.raises(FaceNASError, match=r"broken\.pth.*does not match.*1 missing"):
        load_detector(broken)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": 1}, foreign)
    with pytest.raises(FaceNASError, match=r"foreign\.pth: not a FaceNAS detector checkpoint"):
        load_detector(foreign)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(FaceNASError, match=r"garbage\.pth: not a readable checkpoint"):
        load_detector(garbage)


def test_latency_mode_prints_the_thesis_format(checkpoint, capsys):
    pytest.importorskip("latency.measure")
    evaluate.main(["--latency", "--model", "mobile0.25", "--latency-shape", "1", "64", "64", "--warmup", "1",
                   "--samples", "3", "--threads", "1"])
    out = capsys.readouterr().out
    assert "[1, 64, 64] on " in out and " ms " in out and "mobile0.25" in out
    result = evaluate.measure_backbone_latency(checkpoint=checkpoint, shape=(1, 64, 96), warmup=1, samples=3,
                                               threads=1)
    assert result["n"] == 3 and result["mean_ms"] > 0 and result["shape"] == [1, 64, 96]


def test_bad_evaluate_input(tmp_path):
    with pytest.raises(FaceNASError, match="give --pred-dir"):
        evaluate.main([])
    with pytest.raises(FaceNASError, match="checkpoint not found"):
        evaluate.main(["--checkpoint", str(tmp_path / "nope.pth"), "--data-root", str(tmp_path)])


def test_detect_tool_draws_every_image_of_a_folder(tiny_root, checkpoint, tmp_path, capsys):
    from tools import detect

    out = tmp_path / "drawn"
    assert detect.main(["--checkpoint", str(checkpoint), "--input", str(tiny_root / "val" / "images"), "--out-dir",
                        str(out), "--device", "cpu", "--vis-threshold", "0.0", "--save-txt"]) == 0
    inputs = sorted((tiny_root / "val" / "images").rglob("*.jpg"))
    outputs = sorted(out.rglob("*.jpg"))
    assert len(outputs) == len(inputs) == 4
    assert len(list(out.rglob("*.txt"))) == 4
    import cv2

    drawn = cv2.imread(str(outputs[0]))
    original = cv2.imread(str(inputs[0]))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original.astype(int)).sum() > 0
    with pytest.raises(FaceNASError, match="no such file"):
        detect.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "missing")])
    drawn_img = detect.draw_detections(np.zeros((50, 50, 3), np.uint8), np.array([[10, 10, 30, 30]]),
                                       np.array([0.9]), np.full((1, 10), 20.0), threshold=0.5)
    assert drawn_img[10, 20].any() and drawn_img[20, 20].any()
