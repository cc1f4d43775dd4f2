"""search.py end to end on a tiny space: output loads, resume equals an uninterrupted run, bad input, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import models

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = {
    "name": "tiny", "preset": "rpi4", "pre_stage": "3x3_KKConv_Mid_8", "maxpool": True, "first_channels": 8,
    "last_channels": 32,
    "stages": [{"families": ["KK", "DK"], "max_blocks": 2, "channels": c} for c in (8, 16, 24, 32)],
}
QUICK = ["--img-size", "64", "--batch-size", "4", "--max-steps-per-epoch", "4", "--arch-every", "2",
         "--workers", "0", "--no-progress", "--device", "cpu", "--arch-lr", "0.05"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny space file and a FLOPs table for it (deterministic costs, no timing noise in tests)."""
    from latency.analytic import analytic_table
    from models.search_space import SearchSpace

    folder = tmp_path_factory.mktemp("tiny")
    space_file = folder / "tiny_space.json"
    space_file.write_text(json.dumps(TINY_SPACE))
    space = SearchSpace.load(space_file)
    table = folder / "flops.json"
    analytic_table("flops", space.latency_keys(64), 64, path=table)
    return {"space": space_file, "table": table, "folder": folder}


def _search(args: list[str]) -> None:
    import search

    search.main(args)


def _range(table: Path, space: Path) -> tuple[float, float]:
    from latency.internal_mode import LatencyTable
    from latency.predict import edge_costs
    from models.search_space import SearchSpace

    costs = edge_costs(SearchSpace.load(space), LatencyTable.load(table))
    return costs.smallest, costs.largest


def test_mission_command_on_a_tiny_configuration_completes_and_loads(tiny) -> None:
    low, high = _range(tiny["table"], tiny["space"])
    out = tiny["folder"] / "run"
    target = (low + high) / 2
    cmd = [sys.executable, str(ROOT / "search.py"), "--latency-table", str(tiny["table"]), "--target", f"{target}",
           "--space", str(tiny["space"]), "--warmup-epochs", "1", "--search-epochs", "1", "--out-dir", str(out),
           *QUICK]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reachable" in done.stdout and "predicted backbone flops" in done.stdout
    assert "| blocks" in done.stdout  # the thesis-style table of the chosen architecture
    arch = json.loads((out / "arch.json").read_text())
    assert arch["meta"]["target"] == pytest.approx(target) and low <= arch["meta"]["predicted"] <= high
    for name in ("last.pth", "warmup.pth", "search.log", "history.json", "search.png"):
        assert (out / name).is_file(), name
    backbone = timm.create_model("facenas_arch", arch=str(out / "arch.json"), features_only=True)
    assert backbone.feature_info.reduction() == [8, 16, 32]
    detector = models.build_detector(out / "arch.json")
    assert detector(torch.randn(1, 3, 64, 64))[0].shape == (1, 2 * (64 + 16 + 4), 4)


def test_resumed_search_gives_the_same_arch_as_an_uninterrupted_one(tiny) -> None:
    # Extending a run epoch by epoch only equals one uninterrupted run under a constant rate: a cosine decay is
    # stretched over the epochs asked for, so it is tested below with the same epochs, resumed mid-way.
    low, high = _range(tiny["table"], tiny["space"])
    common = ["--latency-table", str(tiny["table"]), "--target", f"{low + 0.3 * (high - low)}", "--space",
              str(tiny["space"]), "--warmup-epochs", "1", "--seed", "7", "--lr-schedule", "constant", *QUICK]
    whole, parts = tiny["folder"] / "whole", tiny["folder"] / "parts"
    _search(common + ["--search-epochs", "2", "--out-dir", str(whole), "--save-every", "1"])
    assert sorted(p.name for p in whole.glob("epoch_*.pth")) == [f"epoch_{i:04d}.pth" for i in (1, 2, 3)]
    _search(common + ["--search-epochs", "0", "--out-dir", str(parts)])  # stops after warm-up
    _search(common + ["--search-epochs", "1", "--out-dir", str(parts), "--resume", "warmup"])
    _search(common + ["--search-epochs", "2", "--out-dir", str(parts), "--resume"])  # from last.pth
    # from the end of the first search epoch of the uninterrupted run, into a new folder
    _search(common + ["--search-epochs", "2", "--out-dir", str(tiny["folder"] / "from_epoch"), "--resume",
                      str(whole / "epoch_0002.pth")])
    a = json.loads((whole / "arch.json").read_text())
    for other in (parts, tiny["folder"] / "from_epoch"):
        b = json.loads((other / "arch.json").read_text())
        assert a["stages"] == b["stages"]
        assert a["meta"]["probabilities"] == b["meta"]["probabilities"]
    assert a["meta"]["probabilities"] != json.loads((parts / "history.json").read_text())[0]["probs"]


def test_resumed_cosine_search_with_the_same_epochs_matches_the_uninterrupted_one(tiny) -> None:
    low, high = _range(tiny["table"], tiny["space"])
    common = ["--latency-table", str(tiny["table"]), "--target", f"{low + 0.3 * (high - low)}", "--space",
              str(tiny["space"]), "--warmup-epochs", "1", "--search-epochs", "2", "--seed", "7", "--lr-schedule",
              "cosine", *QUICK]
    whole = tiny["folder"] / "cos_whole"
    _search(common + ["--out-dir", str(whole), "--save-every", "1"])
    for start in ("epoch_0001.pth", "epoch_0002.pth"):
        resumed = tiny["folder"] / f"cos_from_{start[:-4]}"
        _search(common + ["--out-dir", str(resumed), "--resume", str(whole / start)])
        a, b = (json.loads((d / "arch.json").read_text()) for d in (whole, resumed))
        assert a["stages"] == b["stages"]
        assert a["meta"]["probabilities"] == b["meta"]["probabilities"]
    lrs = [row["lr"] for row in json.loads((whole / "history.json").read_text())]
    assert lrs[-1] < lrs[0], lrs  # the rate decays: the cosine schedule is really on


def test_changing_the_space_on_resume_is_refused(tiny, tmp_path) -> None:
    from utils.errors import FaceNASError

    common = ["--latency-table", str(tiny["table"]), "--target", "1", "--space", str(tiny["space"]),
              "--warmup-epochs", "1", "--search-epochs", "0", "--out-dir", str(tmp_path), *QUICK]
    _search(common)
    with pytest.raises(FaceNASError, match="cannot resume with changed img_size"):
        _search(common[:-len(QUICK)] + ["--img-size", "96"] + QUICK[2:] + ["--resume"])


@pytest.mark.parametrize("extra, message", [
    (["--target", "-3"], "argument --target: expected a finite number > 0"),
    (["--target", "5", "--space", "R99"], "unknown search space"),
])
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, extra: list[str], message: str) -> None:
    cmd = [sys.executable, str(ROOT / "search.py"), "--latency-table", str(tiny["table"]), "--out-dir",
           str(tmp_path / "run"), *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_table_is_measured_here_and_an_unreachable_target_is_announced(tiny, tmp_path) -> None:
    table, out = tmp_path / "rpi4.json", tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "search.py"), "--latency-table", str(table), "--target", "200", "--space",
           str(tiny["space"]), "--warmup-epochs", "1", "--search-epochs", "1", "--out-dir", str(out),
           "--calibration-networks", "4", "2", *QUICK]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "created a new latency table that describes THIS machine" in done.stdout
    assert "above the largest network of this space on this device" in done.stdout
    assert "calibrating the new table: 4 + 2 random networks" in done.stdout and "no calibration" not in done.stdout
    assert "above_range" in (out / "arch.json").read_text()  # the budget derive says it took the largest network
    from latency.internal_mode import LatencyTable
    from models.search_space import SearchSpace

    saved = LatencyTable.load(table)  # internal mode filled what the space needs, in ms, and calibrated it here
    assert saved.meta["device"] == "cpu" and saved.input_size == 320
    needed = set(SearchSpace.load(tiny["space"]).latency_keys(320))
    assert needed and all(key in saved and saved.latency(key) > 0 for key in needed)
    assert saved.calibration is not None and saved.meta["calibration"]["n_fit"] == 4
    assert sorted(n["role"] for n in saved.networks.values()) == ["fit"] * 4 + ["validate"] * 2
    assert (out / "arch.json").is_file()


def test_a_table_without_calibration_is_warned_about_once(tiny, tmp_path) -> None:
    from latency.internal_mode import LatencyTable

    table = tmp_path / "plain.json"
    LatencyTable.create(table, device="cpu", batch=1, resolution=64, warmup=1, samples=3, threads=1)
    cmd = [sys.executable, str(ROOT / "search.py"), "--latency-table", str(table), "--target", "5", "--space",
           str(tiny["space"]), "--warmup-epochs", "1", "--search-epochs", "1", "--out-dir", str(tmp_path / "r"),
           *QUICK]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (done.stdout + done.stderr).count("has no calibration") == 1


def test_bad_target_writes_nothing(tmp_path) -> None:
    table, out = tmp_path / "rpi4.json", tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "search.py"), "--latency-table", str(table), "--target", "0",
                           "--out-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "argument --target: expected a finite number > 0" in done.stderr
    assert not table.exists() and not out.exists()


def test_malformed_table_is_reported_with_file_and_line(tmp_path) -> None:
    bad = tmp_path / "rpi4.json"
    bad.write_text('{"meta": {\n  "metric": "latency",\n  oops\n}}')
    done = subprocess.run([sys.executable, str(ROOT / "search.py"), "--latency-table", str(bad), "--target", "9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"{bad}:3" in done.stderr and "Traceback" not in done.stderr
    assert bad.read_text().startswith('{"meta"')  # untouched


@pytest.mark.parametrize(("port", "remedies"), [(29531, ["--no-sandwich", "--distill", "0"]),
                                               (29533, ["--sandwich", "--distill", "1", "--lr-schedule", "cosine"])])
def test_two_process_gloo_search_runs(tiny, tmp_path, port, remedies) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(ROOT / "search.py"), "--latency-table", str(tiny["table"]), "--target", "5", "--space",
           str(tiny["space"]), "--warmup-epochs", "1", "--search-epochs", "1", "--out-dir", str(out), *QUICK,
           *remedies]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "arch.json").is_file()


def test_distillation_without_the_sandwich_rule_is_refused_before_anything_is_written(tiny, tmp_path) -> None:
    out = tmp_path / "refused"
    done = subprocess.run([sys.executable, str(ROOT / "search.py"), "--latency-table", str(tiny["table"]),
                           "--target", "5", "--space", str(tiny["space"]), "--no-sandwich", "--distill", "1",
                           "--out-dir", str(out), *QUICK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--distill 1 needs the sandwich rule" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
