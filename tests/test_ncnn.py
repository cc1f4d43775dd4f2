"""ncnn: blocks converted by pnnx and timed in ncnn (the profiler's runtime), export.py --format ncnn, and the ncnn
detector run by evaluate.py / tools/detect.py like a checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import export
import models
from deploy.ncnn_export import head_maps_to_outputs
from deploy.onnx_export import image_like_input
from engine.inference import load_inference_model
from latency.measure import deploy_block
from latency.runtimes import measure_in_runtime, runtime_info, to_runtime
from utils.errors import FaceNASError

pytest.importorskip("ncnn", reason="ncnn is an optional runtime: pip install -r requirements-deploy.txt")
pytest.importorskip("pnnx", reason="pnnx converts to ncnn: pip install -r requirements-deploy.txt")
pytestmark = pytest.mark.usefixtures("one_thread")
KEY = "3x3_DKConv_16_8x40x40"


def test_a_block_in_ncnn_computes_what_pytorch_computes_and_is_timed():
    block = deploy_block(KEY)
    runner = to_runtime(block, (1, 8, 40, 40), "ncnn", threads=1)
    x = torch.randn(1, 8, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(runner.outputs(x)[0], block(x), rtol=1e-4, atol=1e-4)
    timing = measure_in_runtime(block, (1, 8, 40, 40), "ncnn", warmup=2, samples=5, threads=1)
    assert timing["n"] == 5 and timing["mean_ms"] > 0
    info = runtime_info("ncnn", threads=1)
    assert info["runtime"] == "ncnn" and info["precision"] == "float32"
    assert info["ncnn_options"]["use_fp16_storage"] is False and info["ncnn_options"]["lightmode"] is True
    with pytest.raises(FaceNASError, match="no int8 calibration tools"):
        runtime_info("ncnn", precision="int8")
    with pytest.raises(FaceNASError, match="no graph-optimisation levels"):
        runtime_info("ncnn", graph_optimization="all")


def test_head_maps_are_laid_out_like_the_retinaface_heads():
    torch.manual_seed(0)
    detector = models.build_detector("mobile0.25").eval()
    from deploy.ncnn_export import HeadMaps

    x = image_like_input((2, 3, 96, 64))
    with torch.no_grad():
        for got, expected in zip(head_maps_to_outputs(HeadMaps(detector)(x)), detector(x)):
            torch.testing.assert_close(got, expected)


def test_export_ncnn_is_size_generic_checked_and_detects_like_pytorch(tmp_path, capsys):
    torch.manual_seed(3)
    detector = models.build_detector("mobile0.25").eval()
    from engine.checkpoint import model_spec, save_checkpoint

    save_checkpoint(tmp_path / "last.pth", model=detector, spec=model_spec("mobile0.25"),
                    fpn_channels=detector.fpn_channels, epoch=0)
    assert export.main(["--checkpoint", str(tmp_path / "last.pth"), "--format", "ncnn", "--size", "96", "96"]) == 0
    assert "max |ncnn - PyTorch|" in capsys.readouterr().out
    param = tmp_path / "last_detector.ncnn.param"
    assert param.is_file() and (tmp_path / "last_detector.ncnn.bin").is_file()
    assert json.loads((tmp_path / "last_detector.ncnn.json").read_text())["model"] == "mobile0.25"
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*pnnx*"))  # no intermediate files left
    runner, description = load_inference_model(param)
    assert "ncnn detector" in description
    x = image_like_input((1, 3, 71, 129))  # not the trace size: the graph follows the input
    settings = {"score_threshold": 0.3, "nms_threshold": 1.0}  # no NMS: the kept set does not depend on ties
    theirs = detector.detect(x, **settings)[0]
    ours = runner.detect(x, **settings)[0]
    assert len(ours["scores"]) == len(theirs["scores"]) > 0

    def rows(found: dict) -> torch.Tensor:
        table = torch.cat([found["boxes"], found["scores"][:, None], found["landmarks"]], 1).double()
        return table[np.lexsort(table.numpy().T[::-1])]

    torch.testing.assert_close(rows(ours), rows(theirs), rtol=0, atol=1e-3)


def test_ncnn_bad_input_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(SystemExit) as stop:
        export.main(["--model", "mobile0.25", "--format", "ncnn", "--nms"])
    assert stop.value.code == 2
    (tmp_path / "lone.ncnn.param").write_text("7767517\n")
    with pytest.raises(FaceNASError, match=r"lone\.ncnn\.json: not found"):
        load_inference_model(tmp_path / "lone.ncnn.param")
    (tmp_path / "lone.ncnn.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(FaceNASError, match="not a FaceNAS ncnn detector"):
        load_inference_model(tmp_path / "lone.ncnn.param")
