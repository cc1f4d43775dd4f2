"""INT8: post-training static quantization of exports (deploy.quantize), its calibration images, export.py --int8
and the INT8 detector run by the ONNX detector like any export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import export
import models
from deploy.calibration import calibration_batches
from deploy.onnx_export import check_onnx, export_onnx, image_like_input
from deploy.onnx_runtime import OrtSession
from deploy.quantize import float_node_names, quantize_int8, random_calibration
from engine.onnx_inference import OnnxDetector
from utils.errors import FaceNASError

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_int8") / "data"
    generate_dataset(root, SyntheticConfig(num_train=3, num_val=2, min_side=64, max_side=128, seed=5))
    return root


@pytest.fixture(scope="module")
def backbone_graph() -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(0)
    backbone = models.create_backbone("R12_V3_HS").eval()
    return backbone, export_onnx(backbone, "backbone", (1, 3, 64, 64), model_name="R12_V3_HS")


def _ops(data: bytes) -> list[str]:
    return [node.op_type for node in onnx.load_model_from_string(data).graph.node]


def test_int8_graph_is_qdq_keeps_the_metadata_and_stays_near_pytorch(backbone_graph, tmp_path, monkeypatch):
    backbone, data = backbone_graph
    monkeypatch.chdir(tmp_path)
    calibration = [image_like_input((1, 3, 64, 64), seed).numpy() for seed in range(3)]  # the check's input range
    int8 = quantize_int8(data, calibration, metadata={"facenas.precision": "int8"})
    ops = _ops(int8)
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    assert len(int8) < 0.5 * len(data)  # int8 weights: about a quarter of the float file
    meta = OrtSession(int8, 1).metadata
    assert meta["facenas.precision"] == "int8" and meta["facenas.model"] == "R12_V3_HS"  # the float entries stay
    assert not list(tmp_path.iterdir())  # the quantizer's scratch files stay in its own folder
    rows = check_onnx(int8, backbone, "backbone", [(1, 3, 64, 64)], tolerance=0.2, threads=1)
    worst = max(row["scaled_diff"] for row in rows)
    assert 1e-4 < worst < 0.2, rows  # quantized (not exact), yet the same network


def test_keep_float_leaves_the_first_convolution_unquantized(backbone_graph):
    _, data = backbone_graph
    model = onnx.load_model_from_string(data)
    first = float_node_names(model, ["first"])
    assert first == [next(n.name for n in model.graph.node if n.op_type == "Conv")]
    int8 = onnx.load_model_from_string(quantize_int8(data, random_calibration((1, 3, 64, 64), 2), keep_float=["first"]))
    producers = {out: node.op_type for node in int8.graph.node for out in node.output}
    conv = next(n for n in int8.graph.node if n.name == first[0])
    assert producers.get(conv.input[1]) != "DequantizeLinear"  # float weight
    other = next(n for n in int8.graph.node if n.op_type == "Conv" and n.name != first[0])
    assert producers.get(other.input[1]) == "DequantizeLinear"
    with pytest.raises(FaceNASError, match="no node of the graph matches"):
        float_node_names(model, ["no_such_layer"])


def test_calibration_images_are_training_images_prepared_like_evaluation(tiny_root):
    batches = calibration_batches(tiny_root, 2)
    assert len(batches) == 2 and all(b.dtype == np.float32 and b.shape[:2] == (1, 3) for b in batches)
    assert -130 < float(min(b.min() for b in batches)) and float(max(b.max() for b in batches)) < 152  # BGR - mean
    assert [b.shape for b in calibration_batches(tiny_root, 5, (64, 96))] == [(1, 3, 64, 96)] * 3  # only 3 exist
    with pytest.raises(FaceNASError, match="no training images"):
        calibration_batches(tiny_root / "val", 1)


def test_export_int8_writes_a_checked_int8_detector_that_evaluates(tmp_path, tiny_root, capsys):
    out = tmp_path / "m_int8.onnx"
    args = ["--model", "mobile0.25", "--size", "64", "64", "--int8", "--calibration-images", "3", "--data-root",
            str(tiny_root), "--out", str(out)]
    assert export.main(args) == 0
    printed = capsys.readouterr().out
    assert "INT8: static QDQ" in printed and "from 3 training images" in printed
    assert "INT8 largest difference" in printed
    detector = OnnxDetector(out, threads=1)
    assert detector.precision == "int8" and "int8 detector" in detector.description
    settings = json.loads(detector.metadata["facenas.quantization"])
    assert settings["calibration_count"] == 3 and settings["keep_float"] == ["decode"]
    found = detector.detect(image_like_input((1, 3, 64, 96)))
    assert len(found) == 1 and found[0]["boxes"].shape[1] == 4
    # the network is quantized, its prior decoding is not: no decoding node's output is put on an 8-bit grid
    graph = onnx.load(str(out)).graph
    producers = {output: node for node in graph.node for output in node.output}
    decoding = {n.name for n in graph.node if "/detector/" not in n.name and n.op_type not in (
        "Constant", "QuantizeLinear", "DequantizeLinear")}
    quantized_from = [producers[n.input[0]].name for n in graph.node if n.op_type == "QuantizeLinear"
                      and n.input[0] in producers]
    assert decoding and quantized_from and not decoding & set(quantized_from)
    network = [n for n in graph.node if "/detector/" in n.name and n.op_type == "Conv"]
    assert network and all(producers[n.input[0]].op_type == "DequantizeLinear" for n in network)


def test_export_int8_with_nms_and_a_broken_quantization_is_refused(tmp_path, tiny_root, capsys):
    nms = tmp_path / "nms_int8.onnx"
    assert export.main(["--model", "mobile0.25", "--size", "64", "64", "--int8", "--nms", "--calibration-images", "2",
                        "--data-root", str(tiny_root), "--out", str(nms), "--int8-keep-float", "heads"]) == 0
    assert "the same quantization without NMS" in capsys.readouterr().out
    assert OnnxDetector(nms, threads=1).kind == "detector_nms"
    out = tmp_path / "strict.onnx"
    with pytest.raises(FaceNASError, match="INT8 export is far from PyTorch.*nothing written"):
        export.main(["--model", "mobile0.25", "--size", "64", "64", "--int8", "--calibration-images", "2",
                     "--data-root", str(tiny_root), "--out", str(out), "--int8-tolerance", "1e-9"])
    assert not out.exists()
