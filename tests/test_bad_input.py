"""The bad-input corpus: every script and the Python API answer bad input with one line, exit status 2, no
traceback, and leave every good file as it was.

Each case runs a script's ``main`` in this process through the script's own ``run_cli`` (the path a command line
takes), so a traceback would fail the test and a silently accepted value would fail it too (no ``SystemExit``).
Before and after each case the test hashes every file of a shared workspace (tables, spaces, data, checkpoints,
finished runs, prediction folders) and lists the case's own output folder: nothing may change or appear. A few
cases also run as real subprocesses, to check the command-line path end to end.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import search
import train
from tools import detect, latency_report
from utils.errors import FaceNASError, run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = {
    "name": "tiny", "preset": "rpi4", "pre_stage": "3x3_KKConv_Mid_8", "maxpool": True, "first_channels": 8,
    "last_channels": 32,
    "stages": [{"families": ["KK", "DK"], "max_blocks": 2, "channels": c} for c in (8, 16, 24, 32)],
}
GOOD_KEY = "3x3_KKConv_Mid_16_16x12x12"

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Good inputs and finished outputs that no bad command may touch."""
    from data.synthetic import SyntheticConfig, generate_dataset
    from data.wider_eval import load_image_list, write_prediction_file
    from engine.checkpoint import model_spec, save_checkpoint
    from latency.analytic import analytic_table
    from models import build_detector
    from models.search_space import SearchSpace

    ws = tmp_path_factory.mktemp("workspace")
    (ws / "space.json").write_text(json.dumps(TINY_SPACE))
    analytic_table("flops", SearchSpace.load(ws / "space.json").latency_keys(64), 64, path=ws / "flops.json")
    generate_dataset(ws / "data", SyntheticConfig(num_train=8, num_val=3, min_side=64, max_side=112, seed=3))
    shutil.copytree(ws / "data", ws / "bad_data")
    for image in (ws / "bad_data" / "train" / "images").rglob("*.jpg"):
        image.write_bytes(b"\xff\xd8 not a jpeg")  # every training image: the first batch meets one
    shutil.copytree(ws / "data", ws / "bad_labels")
    label = ws / "bad_labels" / "train" / "label.txt"
    lines = label.read_text().splitlines()
    lines[1] = "1 2 three 4"
    label.write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    detector = build_detector("mobile0.25")
    save_checkpoint(ws / "trained" / "last.pth", model=detector, spec=model_spec("mobile0.25"),
                    fpn_channels=detector.fpn_channels, epoch=0)
    (ws / "garbage.pth").write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    (ws / "finished").mkdir()  # a finished search
    (ws / "finished" / "arch.json").write_text('{"format": "facenas-arch/1"}\n')
    (ws / "finished" / "last.pth").write_bytes(b"an earlier search's checkpoint")
    (ws / "finished" / "epoch_0002.pth").write_bytes(b"an earlier search's epoch checkpoint")
    (ws / "plain.txt").write_text("a regular file where folders are expected\n")
    (ws / "bad_table.json").write_text('{"meta": {\n  "metric": "latency",\n  oops\n}}\n')
    (ws / "bad.yaml").write_text("epochs: 1\nlearning-rate: 3\n")
    (ws / "nan.yaml").write_text("lr: .nan\np1: .nan\n")
    (ws / "names.txt").write_text(f"{GOOD_KEY}\n# a comment\n3x3_KKConv_Mid_16_16x0x12\n")
    (ws / "bad_arch.json").write_text('{"format": "facenas-arch/1",\n "stages": [\n')
    gt = ws / "data" / "ground_truth"
    for event, name in load_image_list(gt):
        write_prediction_file(ws / "pred", event, name, np.array([[1.0, 2.0, 30.0, 30.0]]), np.array([0.9]))
    shutil.copytree(ws / "pred", ws / "bad_pred")
    broken = sorted((ws / "bad_pred").rglob("*.txt"))[0]
    broken.write_text(broken.read_text().splitlines()[0] + "\n1\n1 2 3\n")
    return ws


@pytest.fixture(scope="module")
def profiler():
    """The generated profile_latency.py loaded as a module (its own embedded FaceNASError and run_cli)."""
    spec = importlib.util.spec_from_file_location("profile_latency_bad_input", ROOT / "profile_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ the cases
SEARCH = ["--latency-table", "{ws}/flops.json", "--target", "3", "--space", "{ws}/space.json", "--data-root",
          "{ws}/data", "--out-dir", "{tmp}/run", "--img-size", "64", "--batch-size", "2", "--max-steps-per-epoch",
          "1", "--warmup-epochs", "1", "--search-epochs", "1", "--workers", "0", "--no-progress", "--device", "cpu"]
TRAIN = ["--data-root", "{ws}/data", "--out-dir", "{tmp}/run", "--img-size", "64", "--batch-size", "4", "--workers",
         "0", "--threads", "1", "--no-progress", "--no-eval", "--preset", "quick", "--epochs", "1"]
EVAL = ["--pred-dir", "{ws}/pred", "--gt-dir", "{ws}/data/ground_truth"]
DETECT = ["--checkpoint", "{ws}/trained/last.pth", "--input", "{ws}/data/val/images", "--out-dir", "{tmp}/drawn",
          "--device", "cpu"]
PROFILE = ["--names", GOOD_KEY, "--out", "{tmp}/table.json", "--device", "cpu", "--warmup", "1", "--samples", "3",
           "--quiet"]
REPORT = ["--latency-table", "{ws}/flops.json", "--models", "R12_V3_HS"]

# (script, argv, fragments the one-line message must contain); argv and fragments may name {ws} and {tmp}
CASES: list[tuple[str, list[str], list[str]]] = [
    # search.py: numbers
    ("search", SEARCH + ["--target", "nan"], ["argument --target", "finite number > 0", "'nan'"]),
    ("search", SEARCH + ["--target", "inf"], ["argument --target", "'inf'"]),
    ("search", SEARCH + ["--target", "-3"], ["argument --target", "'-3'"]),
    ("search", SEARCH + ["--target", "0"], ["argument --target"]),
    ("search", SEARCH + ["--target", "1e300"], ["{ws}/flops.json", "--target 1e+300", "1000 times"]),
    ("search", SEARCH + ["--target", "1e-300"], ["{ws}/flops.json", "1000 times"]),
    ("search", SEARCH + ["--target", "three"], ["argument --target", "'three'"]),
    ("search", SEARCH + ["--lambda", "-1"], ["argument --lambda", ">= 0"]),
    ("search", SEARCH + ["--lambda", "nan"], ["argument --lambda"]),
    ("search", SEARCH + ["--p1", "nan"], ["argument --p1", "from 0 to 1"]),
    ("search", SEARCH + ["--p1", "1.5"], ["argument --p1"]),
    ("search", SEARCH + ["--p1", "-0.1"], ["argument --p1"]),
    ("search", SEARCH + ["--arch-every", "0"], ["argument --arch-every", ">= 1"]),
    ("search", SEARCH + ["--img-size", "7"], ["argument --img-size", ">= 32"]),
    ("search", SEARCH + ["--warmup-epochs", "-1"], ["argument --warmup-epochs"]),
    ("search", SEARCH + ["--search-epochs", "-2"], ["argument --search-epochs"]),
    ("search", SEARCH + ["--warmup-epochs", "0", "--search-epochs", "0"], ["trains nothing"]),
    ("search", SEARCH + ["--batch-size", "0"], ["argument --batch-size"]),
    ("search", SEARCH + ["--lr", "0"], ["argument --lr"]),
    ("search", SEARCH + ["--arch-lr", "inf"], ["argument --arch-lr"]),
    ("search", SEARCH + ["--momentum", "1"], ["argument --momentum", "< 1"]),
    ("search", SEARCH + ["--weight-decay", "-1e-4"], ["argument --weight-decay"]),
    ("search", SEARCH + ["--holdout-fraction", "1"], ["argument --holdout-fraction"]),
    ("search", SEARCH + ["--save-every", "-1"], ["argument --save-every"]),
    ("search", SEARCH + ["--seed", "-1"], ["argument --seed"]),
    ("search", SEARCH + ["--workers", "-1"], ["argument --workers"]),
    ("search", SEARCH + ["--max-steps-per-epoch", "0"], ["argument --max-steps-per-epoch"]),
    ("search", SEARCH + ["--last-channels", "0"], ["argument --last-channels"]),
    # search.py: paths, files and folders
    ("search", SEARCH + ["--out-dir", "{ws}/plain.txt"], ["{ws}/plain.txt", "names a file"]),
    ("search", SEARCH + ["--out-dir", "{ws}/plain.txt/run"], ["{ws}/plain.txt is a file"]),
    ("search", SEARCH + ["--out-dir", "{ws}/finished"], ["{ws}/finished", "earlier search", "--overwrite"]),
    ("search", SEARCH + ["--out-dir", "{ws}/finished", "--resume", "warmup"], ["{ws}/finished/warmup.pth",
                                                                                 "not found"]),
    ("search", SEARCH + ["--out-dir", "{ws}/finished", "--resume", "--overwrite"], ["{ws}/finished/last.pth",
                                                                                    "--overwrite"]),
    ("search", SEARCH + ["--resume"], ["{tmp}/run/last.pth", "not found"]),
    ("search", SEARCH + ["--resume", "{tmp}/missing.pth"], ["{tmp}/missing.pth", "not found"]),
    ("search", SEARCH + ["--resume", "{ws}/garbage.pth"], ["{ws}/garbage.pth", "not a readable search checkpoint"]),
    ("search", SEARCH + ["--resume", "{ws}/trained/last.pth"], ["{ws}/trained/last.pth", "not a FaceNAS search"]),
    ("search", SEARCH + ["--space", "R99"], ["R99"]),
    ("search", SEARCH + ["--latency-table", "{ws}/bad_table.json"], ["{ws}/bad_table.json:3", "not valid JSON"]),
    ("search", SEARCH + ["--latency-table", "{ws}/data"], ["{ws}/data"]),
    ("search", SEARCH + ["--latency-table", "{ws}/plain.txt/new.json"], ["{ws}/plain.txt is a file"]),
    ("search", SEARCH + ["--data-root", "{tmp}/nowhere"], ["--data-root {tmp}/nowhere", "not found"]),
    ("search", SEARCH + ["--data-root", "{ws}/bad_labels"], ["{ws}/bad_labels/train/label.txt:2"]),
    ("search", SEARCH + ["--config", "{ws}/bad.yaml"], ["{ws}/bad.yaml:1", "unknown option 'epochs'"]),
    ("search", SEARCH + ["--config", "{ws}/nan.yaml"], ["{ws}/nan.yaml:1", "argument --lr"]),
    ("search", SEARCH + ["--config"], ["argument --config", "expected one argument"]),
    ("search", ["--target", "3"], ["required", "--latency-table"]),
    ("search", SEARCH + ["--no-such-option"], ["unrecognized arguments: --no-such-option"]),
    # train.py
    ("train", TRAIN + ["--momentum", "-1"], ["argument --momentum", ">= 0 and < 1"]),
    ("train", TRAIN + ["--warmup-epochs", "nan"], ["argument --warmup-epochs"]),
    ("train", TRAIN + ["--lr", "nan"], ["argument --lr"]),
    ("train", TRAIN + ["--lr", "-1"], ["argument --lr"]),
    ("train", TRAIN + ["--epochs", "0"], ["argument --epochs"]),
    ("train", TRAIN + ["--batch-size", "0"], ["argument --batch-size"]),
    ("train", TRAIN + ["--img-size", "7"], ["argument --img-size", ">= 32"]),
    ("train", TRAIN + ["--decay-epochs", "0"], ["argument --decay-epochs"]),
    ("train", TRAIN + ["--decay-rate", "0"], ["argument --decay-rate"]),
    ("train", TRAIN + ["--grad-clip", "0"], ["argument --grad-clip"]),
    ("train", TRAIN + ["--weight-decay", "inf"], ["argument --weight-decay"]),
    ("train", TRAIN + ["--seed", "-1"], ["argument --seed"]),
    ("train", TRAIN + ["--test-size", "5"], ["argument --test-size", "0 or an integer >= 32"]),
    ("train", TRAIN + ["--threads", "-1"], ["argument --threads"]),
    ("train", TRAIN + ["--workers", "-1"], ["argument --workers"]),
    ("train", TRAIN + ["--fpn-channels", "0"], ["argument --fpn-channels"]),
    ("train", TRAIN + ["--out-dir", "{ws}/plain.txt"], ["{ws}/plain.txt", "names a file"]),
    ("train", TRAIN + ["--out-dir", "{ws}/plain.txt/run"], ["{ws}/plain.txt is a file"]),
    ("train", TRAIN + ["--out-dir", "{ws}/trained"], ["{ws}/trained/last.pth exists", "--resume"]),
    ("train", TRAIN + ["--resume", "{tmp}/missing.pth"], ["{tmp}/missing.pth", "checkpoint not found"]),
    ("train", TRAIN + ["--resume", "{ws}/garbage.pth"], ["{ws}/garbage.pth", "not a readable checkpoint"]),
    ("train", TRAIN + ["--config", "{ws}/bad.yaml"], ["{ws}/bad.yaml:2", "unknown option 'learning-rate'"]),
    ("train", TRAIN + ["--config", "{ws}/nan.yaml"], ["{ws}/nan.yaml:1", "argument --lr"]),
    ("train", TRAIN + ["--data-root", "{tmp}/nowhere"], ["--data-root {tmp}/nowhere", "not found"]),
    ("train", TRAIN + ["--data-root", "{ws}/bad_labels"], ["{ws}/bad_labels/train/label.txt:2"]),
    ("train", TRAIN + ["--model", "no_such_net"], ["no_such_net"]),
    ("train", TRAIN + ["--model", "{ws}/bad_arch.json"], ["{ws}/bad_arch.json:"]),
    ("train", TRAIN + ["--backbone-weights", "{tmp}/nope.pth"], ["{tmp}/nope.pth", "not found"]),
    # evaluate.py
    ("evaluate", EVAL + ["--iou", "0"], ["argument --iou"]),
    ("evaluate", EVAL + ["--iou", "nan"], ["argument --iou"]),
    ("evaluate", EVAL + ["--json", "{ws}/data"], ["{ws}/data", "--json names a folder"]),
    ("evaluate", EVAL + ["--json", "{ws}/plain.txt/ap.json"], ["{ws}/plain.txt is a file"]),
    ("evaluate", EVAL + ["--plot", "{ws}/plain.txt/pr.png"], ["{ws}/plain.txt is a file"]),
    ("evaluate", ["--pred-dir", "{tmp}/nope", "--gt-dir", "{ws}/data/ground_truth"], ["{tmp}/nope", "not found"]),
    ("evaluate", ["--pred-dir", "{ws}/bad_pred", "--gt-dir", "{ws}/data/ground_truth"], ["{ws}/bad_pred/", ".txt:3"]),
    ("evaluate", ["--pred-dir", "{ws}/pred", "--gt-dir", "{ws}/pred"], ["{ws}/pred/wider_face_val.mat"]),
    ("evaluate", ["--checkpoint", "{ws}/garbage.pth", "--data-root", "{ws}/data", "--pred-dir", "{tmp}/p"],
     ["{ws}/garbage.pth", "not a readable checkpoint"]),
    ("evaluate", ["--checkpoint", "{ws}/trained/last.pth", "--data-root", "{ws}/data", "--pred-dir",
                  "{ws}/plain.txt"], ["{ws}/plain.txt", "names a file"]),
    ("evaluate", ["--latency", "--model", "mobile0.25", "--latency-shape", "0", "320", "320"],
     ["argument --latency-shape"]),
    ("evaluate", ["--latency", "--model", "mobile0.25", "--samples", "0"], ["argument --samples"]),
    ("evaluate", ["--checkpoint", "{ws}/trained/last.pth", "--score-threshold", "2"], ["argument --score-threshold"]),
    ("evaluate", ["--checkpoint", "{ws}/trained/last.pth", "--top-k", "0"], ["argument --top-k"]),
    ("evaluate", [], ["give --pred-dir"]),
    # profile_latency.py (the generated script)
    ("profile", PROFILE + ["--batch", "0"], ["argument --batch", ">= 1"]),
    ("profile", PROFILE + ["--names", "3x3_KKConv_Mid_16_16x0x12"], ["16x0x12", "height and width must be positive"]),
    ("profile", PROFILE + ["--names-file", "{ws}/names.txt"], ["{ws}/names.txt:3", "must be positive"]),
    ("profile", PROFILE + ["--out", "{ws}/plain.txt/t.json"], ["{ws}/plain.txt is a file"]),
    ("profile", PROFILE + ["--out", "{ws}/data"], ["{ws}/data", "--out names a folder"]),
    ("profile", PROFILE + ["--log", "{ws}/plain.txt/t.log"], ["{ws}/plain.txt is a file"]),
    ("profile", PROFILE + ["--rounds", "0"], ["argument --rounds"]),
    ("profile", PROFILE + ["--threads", "0"], ["argument --threads"]),
    ("profile", PROFILE + ["--max-ms", "nan"], ["argument --max-ms"]),
    ("profile", PROFILE + ["--rest", "-1"], ["argument --rest"]),
    ("profile", PROFILE + ["--resolution", "0"], ["argument --resolution"]),
    ("profile", PROFILE + ["--max-channel-ratio", "0.5"], ["argument --max-channel-ratio", "0 or"]),
    ("profile", ["--families", "KK", "--channels", "0", "16", "--list-names"], ["--channels", "positive"]),
    ("profile", ["--families", "KK", "--strides", "3", "--list-names"], ["argument --strides"]),
    ("profile", ["--preset", "rpi4", "--random-archs", "-1", "--list-names"], ["argument --random-archs"]),
    # tools/detect.py
    ("detect", DETECT + ["--vis-threshold", "1.5"], ["argument --vis-threshold"]),
    ("detect", DETECT + ["--nms", "nan"], ["argument --nms"]),
    ("detect", DETECT + ["--test-size", "-1"], ["argument --test-size"]),
    ("detect", DETECT + ["--out-dir", "{ws}/plain.txt"], ["{ws}/plain.txt", "names a file"]),
    ("detect", DETECT + ["--input", "{tmp}/missing"], ["{tmp}/missing", "no such file"]),
    ("detect", DETECT + ["--checkpoint", "{ws}/garbage.pth"], ["{ws}/garbage.pth", "not a readable checkpoint"]),
    # tools/latency_report.py
    ("report", REPORT + ["--repeats", "0"], ["argument --repeats"]),
    ("report", REPORT + ["--seed", "nan"], ["argument --seed", "an integer"]),
    ("report", REPORT + ["--json", "{ws}/data"], ["{ws}/data", "--json names a folder"]),
]


def _mains(profiler) -> dict[str, tuple[Callable, Callable]]:
    return {"search": (search.main, run_cli), "train": (train.main, run_cli), "evaluate": (evaluate.main, run_cli),
            "detect": (detect.main, run_cli), "report": (latency_report.main, run_cli),
            "profile": (profiler.main, profiler.run_cli)}


def _fill(text: str, ws: Path, tmp: Path) -> str:
    return text.replace("{ws}", str(ws)).replace("{tmp}", str(tmp))


def _one_line_error(err: str, fragments: list[str]) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("script, argv, fragments", CASES,
                         ids=[f"{c[0]}-{i}-{' '.join(c[1][-2:])[:40]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, profiler, tmp_path, capsys, script, argv, fragments):
    tmp = tmp_path / "case"
    tmp.mkdir()
    main, runner = _mains(profiler)[script]
    before = snapshot(ws)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        runner(lambda: main([_fill(a, ws, tmp) for a in argv]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    _one_line_error(err, [_fill(f, ws, tmp) for f in fragments])
    assert snapshot(ws) == before, "a good file changed"
    assert not any(tmp.iterdir()), f"a failed start left {sorted(p.name for p in tmp.iterdir())}"


def test_the_corpus_covers_every_script():
    scripts = [case[0] for case in CASES]
    assert len(CASES) >= 60
    assert {"search", "train", "evaluate", "profile", "detect"} <= set(scripts)


# ------------------------------------------------------------------------------------ corrupt images, workers
@pytest.mark.parametrize("script", ["train", "search"])
def test_a_corrupt_image_read_by_a_worker_is_one_line(ws, profiler, tmp_path, capsys, script):
    out = tmp_path / "run"
    base = TRAIN if script == "train" else SEARCH
    extra = ["--arch-every", "1"] if script == "search" else []  # the tiny data gives one step per epoch
    argv = [_fill(a, ws, tmp_path) for a in base + ["--data-root", "{ws}/bad_data", "--workers", "2", *extra]]
    main, runner = _mains(profiler)[script]
    before = snapshot(ws)
    with pytest.raises(SystemExit) as exit_info:
        runner(lambda: main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    _one_line_error(err, [str(ws / "bad_data" / "train" / "images"), "not a readable image"])
    assert "DataLoader worker" not in err
    assert snapshot(ws) == before
    assert not list(out.glob("*.pth"))  # the run failed in its first epoch: no checkpoint


# ---------------------------------------------------------------------------------------------- Python API
API_CASES = [
    ("check_output_file on a folder", lambda ws: __import__("utils.options", fromlist=["x"]).check_output_file(
        ws / "data", "the report"), ["{ws}/data", "names a folder"]),
    ("check_output_dir under a file", lambda ws: __import__("utils.options", fromlist=["x"]).check_output_dir(
        ws / "plain.txt" / "out", "--out-dir"), ["{ws}/plain.txt is a file"]),
    ("read a garbage checkpoint", lambda ws: __import__("engine.checkpoint", fromlist=["x"]).load_detector(
        ws / "garbage.pth"), ["{ws}/garbage.pth"]),
    ("evaluate_from_folders with iou 0", lambda ws: evaluate.evaluate_from_folders(
        ws / "pred", ws / "data" / "ground_truth", iou=0.0), ["--iou"]),
    ("evaluate_from_folders writing JSON onto a folder", lambda ws: evaluate.evaluate_from_folders(
        ws / "pred", ws / "data" / "ground_truth", json_path=ws / "data"), ["{ws}/data", "names a folder"]),
    ("a malformed latency table", lambda ws: __import__("latency.internal_mode", fromlist=["x"]).LatencyTable.load(
        ws / "bad_table.json"), ["{ws}/bad_table.json:3"]),
    ("a corrupt image", lambda ws: __import__("data.widerface", fromlist=["x"]).read_image(
        next((ws / "bad_data" / "train" / "images").rglob("*.jpg"))), ["{ws}/bad_data", "not a readable image"]),
    ("train.main with a bad option", lambda ws: train.main(["--momentum", "-1"]), ["argument --momentum"]),
    ("search.main into a finished run", lambda ws: search.main([_fill(a, ws, ws) for a in SEARCH] + [
        "--out-dir", str(ws / "finished")]), ["{ws}/finished", "earlier search"]),
]


@pytest.mark.parametrize("name, call, fragments", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api_raises_one_line_facenas_errors(ws, name, call, fragments):
    before = snapshot(ws)
    with pytest.raises(FaceNASError) as info:
        call(ws)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert _fill(fragment, ws, ws) in message, (fragment, message)
    assert snapshot(ws) == before


def test_range_types_state_their_range_in_help_and_reject_what_is_outside():
    from utils.options import PROBABILITY, float_range, int_range

    assert PROBABILITY("0.25") == 0.25 and int_range(1, 2)("2") == 2 and float_range(1, also=(0,))("0") == 0.0
    for kind, text in ((PROBABILITY, "nan"), (PROBABILITY, "1.01"), (int_range(1), "1.5"), (int_range(1), "0"),
                       (float_range(0, low_open=True), "0"), (float_range(0, 1, high_open=True), "1"),
                       (float_range(0), "inf")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            kind(text)
    assert float_range(0, finite=False)("inf") == float("inf")
    assert float_range(0, 1, low_open=True).text == "a finite number > 0 and <= 1"


@pytest.mark.parametrize("name", ["search", "train", "evaluate", "detect", "report", "profile"])
def test_every_numeric_option_is_range_checked_and_says_so_in_help(name, profiler):
    from utils.options import NumberRange

    parser = {"search": search.build_parser, "train": train.build_parser, "evaluate": evaluate.build_parser,
              "detect": detect.build_parser, "report": latency_report.build_parser,
              "profile": profiler.build_parser}[name]()
    numeric = [a for a in parser._actions if a.type in (int, float)]
    assert not numeric, [a.dest for a in numeric]  # a bare int/float would take nan, inf and negatives
    ranged = [a for a in parser._actions if type(a.type).__name__ == "NumberRange"]
    assert ranged
    text = " ".join(parser.format_help().split())
    for action in ranged:
        assert isinstance(action.type, NumberRange) or name == "profile"  # the profiler embeds its own copy
        assert f"(range: {action.type.text})" in text, action.dest


# --------------------------------------------------------------------------------- the real command lines
def _subprocess_cases(ws: Path, tmp: Path) -> list[tuple[list[str], str]]:
    return [
        ([sys.executable, "search.py", *[_fill(a, ws, tmp) for a in SEARCH], "--p1", "nan"], "argument --p1"),
        ([sys.executable, "train.py", *[_fill(a, ws, tmp) for a in TRAIN], "--momentum", "-1"], "argument --momentum"),
        ([sys.executable, "evaluate.py", *[_fill(a, ws, tmp) for a in EVAL], "--json", str(ws / "data")],
         "--json names a folder"),
        ([sys.executable, "tools/detect.py", *[_fill(a, ws, tmp) for a in DETECT], "--nms", "nan"], "argument --nms"),
    ]


def test_real_command_lines_print_one_line_and_exit_2(ws, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = snapshot(ws)
    for command, fragment in _subprocess_cases(ws, tmp_path):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 2, (command, done.stderr[-2000:])
        _one_line_error(done.stderr, [fragment])
    # the profiler alone in an empty folder, as on a device
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(ROOT / "profile_latency.py", device / "profile_latency.py")
    clean = {k: v for k, v in env.items() if not k.startswith("PYTHON")}
    done = subprocess.run([sys.executable, "-I", "profile_latency.py", "--names", GOOD_KEY, "--batch", "0"],
                          cwd=device, capture_output=True, text=True, timeout=300, env=clean)
    assert done.returncode == 2
    _one_line_error(done.stderr, ["argument --batch"])
    assert snapshot(ws) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device"]
