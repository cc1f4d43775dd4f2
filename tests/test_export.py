"""export.py and models.export: ONNX exports with dynamic shapes that match PyTorch in ONNX Runtime, a check that
fails when they do not, NMS in the graph, and the exported detector run by evaluate.py and tools/detect.py with the
same pre- and post-processing as the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import export
import models
from deploy.onnx_export import (
    DecodedDetector,
    NmsSettings,
    check_onnx,
    export_onnx,
    graph_priors,
    image_like_input,
    ort_session,
)
from engine.checkpoint import load_detector, model_spec, save_checkpoint
from engine.inference import EvalSettings, detect_image, preprocess
from engine.onnx_inference import OnnxDetector
from models.anchors import make_priors
from utils.errors import FaceNASError

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPES = [(1, 3, 64, 64), (2, 3, 96, 64), (1, 3, 71, 57)]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_export") / "data"
    generate_dataset(root, SyntheticConfig(num_train=2, num_val=4, min_side=64, max_side=160, seed=12))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A random mobile0.25 checkpoint and its two detector exports (decoded, with NMS), made with export.py."""
    torch.manual_seed(0)
    detector = models.build_detector("mobile0.25")
    folder = tmp_path_factory.mktemp("export_run")
    save_checkpoint(folder / "last.pth", model=detector, spec=model_spec("mobile0.25"),
                    fpn_channels=detector.fpn_channels, epoch=2)
    torch.set_num_threads(1)
    for extra in ([], ["--nms"]):
        assert export.main(["--checkpoint", str(folder / "last.pth"), "--size", "96", "96", *extra]) == 0
    return folder


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    torch.manual_seed(1)
    return models.build_detector("mobile0.25").eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (71, 57), (33, 129)])
def test_graph_priors_are_the_anchor_module_priors_in_pixels(size):
    height, width = size
    maps = [torch.zeros(1, 1, -(-height // step), -(-width // step)) for step in (8, 16, 32)]
    expected = make_priors(size) * torch.tensor([width, height, width, height])
    torch.testing.assert_close(graph_priors(maps), expected, rtol=0, atol=1e-4)


def test_backbone_export_is_dynamic_and_matches_pytorch_on_three_shapes():
    torch.manual_seed(0)
    backbone = models.create_backbone("R12_V3_HS").eval()
    data = export_onnx(backbone, "backbone", (1, 3, 64, 64), model_name="R12_V3_HS")
    session = ort_session(data, 1).session
    dims = session.get_inputs()[0].shape
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims
    assert [o.name for o in session.get_outputs()] == ["feat_s8", "feat_s16", "feat_s32"]
    rows = check_onnx(data, backbone, "backbone", SHAPES, threads=1)
    assert len(rows) == 9 and all(row["ok"] for row in rows), rows
    assert max(row["max_abs_diff"] for row in rows) < 1e-4
    assert [row["shape"] for row in rows[3:6]] == [[2, 64, 12, 8], [2, 128, 6, 4], [2, 256, 3, 2]]


def test_the_check_fails_when_the_export_is_not_the_model(detector):
    data = export_onnx(detector, "detector", (1, 3, 64, 64))
    other = models.build_detector("mobile0.25").eval()  # same architecture, other weights
    rows = check_onnx(data, other, "detector", SHAPES[:1], threads=1)
    assert not all(row["ok"] for row in rows)


def test_decoded_detector_gives_the_pytorch_detections_in_pixels(detector):
    """The graph's decoding equals RetinaFace.detect's: compare the selected detections with NMS switched off (IoU
    threshold 1), where every candidate above the score threshold is kept and the set is unambiguous."""
    data = export_onnx(detector, "detector", (1, 3, 64, 64))
    rows = check_onnx(data, detector, "detector", SHAPES, threads=1)
    assert all(row["ok"] for row in rows), rows
    x = image_like_input((1, 3, 88, 120))
    session = ort_session(data, 1).session
    boxes, scores, landmarks = (torch.from_numpy(a) for a in session.run(None, {"images": x.numpy()}))
    from models.anchors import select_detections

    settings = {"score_threshold": 0.5, "nms_threshold": 1.0, "top_k": 100000, "keep_top_k": 100000}
    ours = select_detections(boxes[0], scores[0], landmarks[0], **settings)
    theirs = detector.detect(x, **settings)[0]
    assert 0 < len(theirs["scores"]) == len(ours["scores"])

    def rows_sorted(found):
        table = torch.cat([found["boxes"], found["scores"][:, None], found["landmarks"]], 1).double()
        return table[np.lexsort(table.numpy().T[::-1])]

    torch.testing.assert_close(rows_sorted(ours), rows_sorted(theirs), rtol=0, atol=1e-3)


def test_nms_export_is_checked_and_a_wrong_threshold_is_caught(detector):
    strict = NmsSettings(nms_threshold=0.4)
    data = export_onnx(detector, "detector", (1, 3, 64, 64), nms_settings=strict)
    session = ort_session(data, 1).session
    assert [o.name for o in session.get_outputs()] == ["detections"]
    rows = check_onnx(data, detector, "detector", SHAPES, strict, threads=1)
    assert all(row["ok"] for row in rows), rows
    batch = session.run(None, {"images": image_like_input((2, 3, 96, 64)).numpy()})[0]
    assert batch.shape[1] == 16 and set(np.unique(batch[:, 0])) == {0.0, 1.0}
    assert np.all(np.diff(batch[:, 5]) <= 0)  # descending scores
    loose = export_onnx(detector, "detector", (1, 3, 64, 64), nms_settings=NmsSettings(nms_threshold=0.9))
    rows = check_onnx(loose, detector, "detector", SHAPES[:1], strict, threads=1)
    assert not rows[0]["ok"] and "overlap" in rows[0]["note"]


def test_static_export_fixes_the_shape(detector):
    data = export_onnx(detector, "detector", (1, 3, 64, 64), dynamic=False)
    session = ort_session(data, 1).session
    assert session.get_inputs()[0].shape == [1, 3, 64, 64]
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own error type
        session.run(None, {"images": image_like_input((1, 3, 96, 64)).numpy()})


def test_export_cli_writes_a_checked_file_with_metadata(tmp_path, capsys):
    out = tmp_path / "mobile.onnx"
    assert export.main(["--model", "mobile0.25", "--what", "backbone", "--size", "64", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "largest difference" in printed and printed.count("max |ONNX - PyTorch|") == 3
    meta = ort_session(out.read_bytes(), 1).session.get_modelmeta().custom_metadata_map
    assert meta["facenas.format"] == "facenas-onnx/1" and meta["facenas.kind"] == "backbone"
    assert meta["facenas.model"] == "mobile0.25" and meta["facenas.dynamic"] == "batch,height,width"
    assert meta["facenas.weights"] == "random weights"


def test_a_failed_check_is_an_error_and_overwrites_nothing(tmp_path):
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"the good file")
    with pytest.raises(FaceNASError) as caught:  # run_cli prints it as one 'error:' line, exit status 2
        export.main(["--model", "mobile0.25", "--size", "64", "64", "--tolerance", "1e-30", "--out", str(out)])
    message = str(caught.value)
    assert message.startswith("the ONNX export does not match PyTorch") and "nothing written" in message
    assert "\n" not in message
    assert out.read_bytes() == b"the good file"


@pytest.mark.parametrize("argv, message", [
    (["--model", "mobile0.25", "--check-shapes", "2x64x"], "is not BxHxW"),
    (["--model", "weights/last.pth"], "give it with --checkpoint"),
    (["--model", "no_such_net"], "unknown model"),
    (["--model", "mobile0.25", "--static", "--check-shapes", "1x32x32"], "--static fixes the input"),
    (["--checkpoint", "missing.pth"], "missing.pth: checkpoint not found"),
    (["--model", "mobile0.25", "--opset", "9"], "--opset must be >= 11"),
    (["--model", "mobile0.25", "--nms", "--top-k", "0"], "top-k"),
    (["--model", "mobile0.25", "--size", "64", "64", "--opset", "30"], "at opset 30 failed"),
])
def test_bad_export_input_is_a_one_line_error(argv, message):
    with pytest.raises(FaceNASError, match=message):
        export.main(argv)


def test_export_help_states_every_default():
    text = export.build_parser().format_help()
    for action in export.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in (action.help or ""), action.dest
    assert "--nms" in text and "--static" in text
    for argv in (["--model", "mobile0.25", "--what", "backbone", "--nms"],
                 ["--checkpoint", "last.pth", "--fpn-channels", "64"]):
        with pytest.raises(SystemExit):
            export.main(argv)


def test_exported_detector_scores_the_same_ap_as_the_checkpoint(tiny_root, run_dir):
    """evaluate.py on the checkpoint and on its exports: same AP (to 1e-3), same prediction files."""
    results = {}
    for name in ("last.pth", "last_detector.onnx", "last_detector_nms.onnx"):
        pred = run_dir / f"pred_{name}"
        json_path = run_dir / f"{name}.json"
        assert evaluate.main(["--checkpoint", str(run_dir / name), "--data-root", str(tiny_root), "--pred-dir",
                              str(pred), "--json", str(json_path), "--device", "cpu"]) == 0
        results[name] = (json.loads(json_path.read_text()), pred)
    reference, ref_pred = results["last.pth"]
    assert reference["mean"] > 0
    for name in ("last_detector.onnx", "last_detector_nms.onnx"):
        got, pred = results[name]
        for setting in ("easy", "medium", "hard"):
            assert got[setting] == pytest.approx(reference[setting], abs=1e-3), (name, setting)
    # the decoded export goes through the very same selection: the files agree line by line (boxes to 1e-2 px)
    found = total = 0
    for ref_file in sorted(ref_pred.rglob("*.txt")):
        mine = (results["last_detector.onnx"][1] / ref_file.relative_to(ref_pred)).read_text().splitlines()
        theirs = ref_file.read_text().splitlines()
        assert mine[0] == theirs[0]
        a = np.array([[float(v) for v in line.split()] for line in theirs[2:]]).reshape(-1, 5)
        b = np.array([[float(v) for v in line.split()] for line in mine[2:]]).reshape(-1, 5)
        total += len(a)
        if len(b):
            found += int((np.abs(a[:, None, :] - b[None, :, :]).max(-1).min(1) < 1e-2).sum())
    assert total > 0 and found >= 0.98 * total, (found, total)


def test_onnx_runner_uses_the_same_settings_and_refuses_others(tiny_root, run_dir):
    from data.widerface import WiderFaceValImages

    image = next(iter(WiderFaceValImages(tiny_root)))[0]
    plain = OnnxDetector(run_dir / "last_detector.onnx")
    assert plain.kind == "detector" and "ONNX Runtime" in plain.description and "epoch 3" in plain.description
    strict = EvalSettings(score_threshold=0.5, nms_threshold=1.0, top_k=100000, keep_top_k=100000)
    found = detect_image(plain, image, strict)
    torch_found = detect_image(load_detector(run_dir / "last.pth")[0], image, strict)
    assert len(found["scores"]) == len(torch_found["scores"]) > 0
    np.testing.assert_allclose(np.sort(found["scores"]), np.sort(torch_found["scores"]), atol=1e-5)
    with_nms = OnnxDetector(run_dir / "last_detector_nms.onnx")
    assert with_nms.kind == "detector_nms" and with_nms.baked["nms_threshold"] == 0.4
    assert len(detect_image(with_nms, image)["scores"]) > 0
    with pytest.raises(FaceNASError, match=r"fixed settings.*nms_threshold 0\.5"):
        detect_image(with_nms, image, EvalSettings(nms_threshold=0.5))
    x = preprocess(image)
    assert with_nms.detect(x)[0]["boxes"].shape[1] == 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice, for the foreign file
def test_bad_onnx_files_are_one_line_errors(tmp_path, run_dir):
    with pytest.raises(FaceNASError, match="ONNX file not found"):
        OnnxDetector(tmp_path / "none.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(FaceNASError, match="garbage.onnx: ONNX Runtime cannot load it"):
        OnnxDetector(garbage)
    backbone = tmp_path / "backbone.onnx"
    export.main(["--model", "mobile0.25", "--what", "backbone", "--size", "64", "64", "--out", str(backbone)])
    with pytest.raises(FaceNASError, match="backbone export has no detection outputs"):
        OnnxDetector(backbone)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 1), (torch.zeros(1, 3, 8, 8),), str(foreign), dynamo=False)
    with pytest.raises(FaceNASError, match="not a FaceNAS export"):
        OnnxDetector(foreign)
    with pytest.raises(FaceNASError, match="--latency times a PyTorch backbone"):
        evaluate.main(["--checkpoint", str(run_dir / "last_detector.onnx"), "--latency"])


def test_default_prediction_folder_of_an_export_is_its_own(run_dir):
    assert evaluate.default_pred_dir(run_dir / "last_detector.onnx") == \
        run_dir.resolve() / "last_detector_widerface_val"
    assert evaluate.default_pred_dir(run_dir / "last.pth", 640) == run_dir.resolve() / "widerface_val_s640"


def test_detect_tool_runs_an_onnx_detector(tiny_root, run_dir, tmp_path, capsys):
    from tools import detect

    out = tmp_path / "drawn"
    assert detect.main(["--checkpoint", str(run_dir / "last_detector.onnx"), "--input",
                        str(tiny_root / "val" / "images"), "--out-dir", str(out), "--device", "cpu",
                        "--save-txt"]) == 0
    assert len(list(out.rglob("*.jpg"))) == 4 and len(list(out.rglob("*.txt"))) == 4
    assert "ONNX detector" in capsys.readouterr().out


def test_decoded_wrapper_leaves_the_detector_without_hooks(detector):
    DecodedDetector(detector)(torch.zeros(1, 3, 64, 64))
    assert all(not ssh._forward_hooks for ssh in detector.ssh)


def test_default_output_paths():
    import argparse

    args = argparse.Namespace(checkpoint="runs/a/last.pth", what="detector", nms=True, int8=False)
    assert export.default_out(args, "R12_V3_HS") == Path("runs/a/last_detector_nms.onnx")
    args.int8 = True
    assert export.default_out(args, "R12_V3_HS") == Path("runs/a/last_detector_nms_int8.onnx")
    args = argparse.Namespace(checkpoint=None, what="backbone", nms=False, int8=False)
    assert export.default_out(args, "mobile0.25") == Path("runs/exports/mobile0.25_backbone.onnx")
    assert export.default_out(args, "runs/s/arch.json") == Path("runs/exports/arch_backbone.onnx")
