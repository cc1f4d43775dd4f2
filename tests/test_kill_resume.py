"""kill -9 at bad moments: a tiny search and a tiny training run are killed several times (inside checkpoint
writes, right after them, inside an epoch), resumed each time, and must end equal, tensor by tensor, to an
uninterrupted run; no extra checkpoint is lost and no temporary file stays behind.

The moments inside a write come from the test hook of :mod:`utils.atomic`: ``FACENAS_PAUSE_BEFORE_RENAME=NAME[:N]``
stops the process just before the N-th rename onto NAME, with the temporary file complete, and says so on stderr.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = {
    "name": "tiny", "preset": "rpi4", "pre_stage": "3x3_KKConv_Mid_8", "maxpool": True, "first_channels": 8,
    "last_channels": 32,
    "stages": [{"families": ["KK", "DK"], "max_blocks": 2, "channels": c} for c in (8, 16, 24, 32)],
}
PAUSED = "FACENAS_PAUSE_BEFORE_RENAME: paused"
TIMEOUT = 240


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from data.synthetic import SyntheticConfig, generate_dataset
    from latency.analytic import analytic_table
    from models.search_space import SearchSpace

    folder = tmp_path_factory.mktemp("kill")
    (folder / "space.json").write_text(json.dumps(TINY_SPACE))
    analytic_table("flops", SearchSpace.load(folder / "space.json").latency_keys(64), 64, path=folder / "flops.json")
    generate_dataset(folder / "data", SyntheticConfig(num_train=10, num_val=2, min_side=64, max_side=96, seed=5))
    return {"folder": folder, "space": folder / "space.json", "table": folder / "flops.json", "data": folder / "data"}


def _env(pause: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FACENAS_PAUSE_BEFORE_RENAME"}
    env["OMP_NUM_THREADS"] = "1"
    if pause:
        env["FACENAS_PAUSE_BEFORE_RENAME"] = pause
    return env


def _start(command: list[str], log: Path, pause: str | None = None) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed by _finish / _kill
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle, env=_env(pause))
    proc.log_handle = handle  # type: ignore[attr-defined]
    return proc


def _kill_when(proc: subprocess.Popen, log: Path, ready, what: str) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fails when the process ends or stalls first."""
    deadline = time.time() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            proc.log_handle.close()
            raise AssertionError(f"ended (status {proc.returncode}) before {what}: {log.read_text()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.log_handle.close()
    assert proc.returncode == -signal.SIGKILL


def _kill_paused(proc: subprocess.Popen, log: Path) -> None:
    _kill_when(proc, log, lambda: PAUSED in _text(log), "the pause before the rename")


def _finish(proc: subprocess.Popen, log: Path) -> None:
    proc.wait(timeout=TIMEOUT)
    proc.log_handle.close()
    assert proc.returncode == 0, log.read_text()[-3000:]


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Nested checkpoint contents equal: tensors bit for bit; timings and the run folder's name excepted."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        skip = {"seconds", "out_dir", "images_per_s", "steps_per_s", "weight_steps_per_s"}
        assert set(a) - skip == set(b) - skip, where
        for key in a:
            if key not in skip:
                _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# -------------------------------------------------------------------------------------------------- search
def _search_command(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "search.py"), "--latency-table", str(inputs["table"]), "--target", "3.2",
            "--space", str(inputs["space"]), "--data-root", str(inputs["data"]), "--out-dir", str(out),
            "--img-size", "64", "--batch-size", "2", "--max-steps-per-epoch", "2", "--arch-every", "1",
            "--warmup-epochs", "2", "--search-epochs", "2", "--save-every", "3", "--seed", "3", "--arch-lr", "0.1",
            "--workers", "0", "--no-progress", "--device", "cpu", *extra]


def test_search_killed_at_every_moment_resumes_to_the_uninterrupted_result(inputs):
    folder = inputs["folder"]
    ref, out = folder / "search_ref", folder / "search_killed"
    log = folder / "search_stderr.txt"
    _finish(_start(_search_command(inputs, ref), log), log)

    # 1. inside the first write of last.pth (warm-up epoch 1): nothing to resume, a fresh start is allowed
    _kill_paused(_start(_search_command(inputs, out), log, "last.pth"), log)
    assert not (out / "last.pth").exists() and _temporaries(out)
    # 2. a fresh start, killed inside the write of warmup.pth at the end of warm-up (last.pth is epoch 1)
    _kill_paused(_start(_search_command(inputs, out), log, "warmup.pth"), log)
    assert not (out / "warmup.pth").exists() and _load(out / "last.pth")["epoch"] == 1
    # 3. resumed, killed right after warmup.pth and last.pth (inside the history write): warmup.pth is there
    _kill_paused(_start(_search_command(inputs, out, "--resume"), log, "history.json"), log)
    assert _temporaries(out) == [t for t in _temporaries(out) if t.startswith(".history.json.")]
    _assert_same(_load(ref / "warmup.pth"), _load(out / "warmup.pth"), "warmup.pth")
    # 4. resumed, killed somewhere after the first search epoch (its checkpoint write or the next epoch)
    proc = _start(_search_command(inputs, out, "--resume"), log)
    _kill_when(proc, log, lambda: "epoch 3 (search" in _text(out / "search.log"), "search epoch 3")
    # 5. resumed, killed inside the final write of arch.json
    _kill_paused(_start(_search_command(inputs, out, "--resume"), log, "arch.json"), log)
    _assert_same(_load(ref / "last.pth"), _load(out / "last.pth"), "last.pth")
    # 6. resumed to the end
    _finish(_start(_search_command(inputs, out, "--resume"), log), log)

    assert _temporaries(out) == []
    for name in ("last.pth", "warmup.pth", "epoch_0003.pth"):
        _assert_same(_load(ref / name), _load(out / name), name)
    a, b = (json.loads((f / "arch.json").read_text()) for f in (ref, out))
    assert a["stages"] == b["stages"] and a["meta"]["probabilities"] == b["meta"]["probabilities"]
    assert json.loads((out / "history.json").read_text())[-1]["probs"] == a["meta"]["probabilities"]
    # --resume warmup (to try another target from the same warm-up) works after the kills
    _finish(_start(_search_command(inputs, out, "--resume", "warmup"), log), log)
    assert json.loads((out / "arch.json").read_text())["meta"]["probabilities"] == a["meta"]["probabilities"]
    # identical runs store identical generator states (Python and NumPy included), so only timings differ
    _assert_same(_load(ref / "last.pth")["rng"], _load(out / "last.pth")["rng"], "rng")
    # a finished search is not overwritten by a fresh run into its folder
    done = subprocess.run(_search_command(inputs, out), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                          env=_env())
    assert done.returncode == 2 and "holds an earlier search" in done.stderr and "--overwrite" in done.stderr
    _assert_same(_load(ref / "last.pth"), _load(out / "last.pth"), "last.pth after the refusal")


# ------------------------------------------------------------------------------------------------ training
def _train_command(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--data-root", str(inputs["data"]), "--out-dir", str(out),
            "--img-size", "64", "--batch-size", "4", "--epochs", "3", "--save-every", "2", "--lr", "0.01",
            "--warmup-epochs", "0.5", "--decay-epochs", "2", "--seed", "5", "--workers", "0", "--threads", "1",
            "--no-progress", "--no-eval", "--preset", "quick", *extra]


def test_training_killed_at_every_moment_resumes_to_the_uninterrupted_result(inputs):
    folder = inputs["folder"]
    ref, out = folder / "train_ref", folder / "train_killed"
    log = folder / "train_stderr.txt"
    _finish(_start(_train_command(inputs, ref), log), log)

    # 1. inside the write of epoch_0002.pth, which comes before last.pth
    _kill_paused(_start(_train_command(inputs, out), log, "epoch_0002.pth"), log)
    assert _load(out / "last.pth")["epoch"] == 0 and not (out / "epoch_0002.pth").exists()
    # 2. resumed, killed inside the last.pth write after epoch_0002.pth was written: the epoch file survives
    _kill_paused(_start(_train_command(inputs, out, "--resume"), log, "last.pth"), log)
    assert (out / "epoch_0002.pth").exists() and _load(out / "last.pth")["epoch"] == 0
    # 3. resumed, killed after its first epoch (in that epoch's checkpoint writes or in the last epoch)
    proc = _start(_train_command(inputs, out, "--resume"), log)
    _kill_when(proc, log, lambda: "epoch 2/3:" in _text(out / "train.log").split("resuming from")[-1],
               "epoch 2 of the resumed run")
    # 4. resumed to the end
    _finish(_start(_train_command(inputs, out, "--resume"), log), log)

    assert _temporaries(out) == []
    for name in ("last.pth", "epoch_0002.pth"):
        a, b = _load(ref / name), _load(out / name)
        for key in ("state_dict", "optimizer", "epoch", "rng", "history"):
            _assert_same(a[key], b[key], f"{name}:{key}")


# ------------------------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask, expected):
    from utils.atomic import atomic_write_json, current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_json(tmp_path / "new.json", {"a": 1})
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == expected
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == expected


def test_replacing_a_file_keeps_its_mode(tmp_path):
    from utils.atomic import atomic_write_text

    target = tmp_path / "table.json"
    target.write_text("{}")
    target.chmod(0o640)
    old = os.umask(0o077)
    try:
        atomic_write_text(target, '{"updated": true}')
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o640 and "updated" in target.read_text()


def test_stale_temporaries_of_ours_are_removed_and_nothing_else(tmp_path):
    from utils.atomic import remove_stale_temporaries

    ours = [tmp_path / ".last.pth.a1b2c3d4.tmp", tmp_path / ".table.json.zz_9yy8x.tmp"]
    others = [tmp_path / "last.pth", tmp_path / ".hidden.tmp", tmp_path / "notes.tmp", tmp_path / ".x.toolong123.tmp"]
    for path in ours + others:
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path, ["table.json"]) == [ours[1]]
    assert sorted(remove_stale_temporaries(tmp_path)) == [ours[0]]
    assert all(p.exists() for p in others) and not any(p.exists() for p in ours)
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_the_pause_hook_waits_only_for_its_file_and_its_count(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from utils.atomic import atomic_write_text as w; "
            "from pathlib import Path; d = Path(sys.argv[2]); w(d / 'a.txt', '1'); w(d / 'b.txt', '1'); "
            "w(d / 'b.txt', '2'); print('unreachable')")
    log = tmp_path / "stderr.txt"
    proc = _start([sys.executable, "-c", code, str(ROOT), str(tmp_path)], log, "b.txt:2")
    _kill_paused(proc, log)
    assert (tmp_path / "a.txt").read_text() == "1" and (tmp_path / "b.txt").read_text() == "1"
    assert _temporaries(tmp_path) and "b.txt" in log.read_text()


def test_search_overwrite_deletes_the_earlier_search_and_warm_up_only_derives_nothing(inputs, tmp_path):
    import search

    def run(*extra: str) -> None:
        search.main(_search_command(inputs, out, "--warmup-epochs", "1", "--max-steps-per-epoch", "1",
                                    "--save-every", "0", *extra)[2:])

    out = tmp_path / "run"
    out.mkdir()
    for name in ("arch.json", "last.pth", "epoch_0007.pth", "history.json", ".last.pth.abcd1234.tmp"):
        (out / name).write_text("an earlier search")
    run("--overwrite", "--search-epochs", "0")
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "last.pth", "search.log", "warmup.pth"]
    log = (out / "search.log").read_text()
    assert "--overwrite: deleted the earlier search" in log and "epoch_0007.pth" in log
    assert "no architecture derived" in log and "removed 1 temporary file" in log
    assert _load(out / "warmup.pth")["epoch"] == 1
    # a missing warmup.pth is re-created from a checkpoint that is the end of warm-up, and reported past it
    (out / "warmup.pth").unlink()
    run("--resume", "--search-epochs", "0")
    assert (out / "warmup.pth").read_bytes() == (out / "last.pth").read_bytes()
    run("--resume", "--search-epochs", "1")
    (out / "warmup.pth").unlink()
    run("--resume", "--search-epochs", "1")
    assert "cannot be re-created exactly" in (out / "search.log").read_text()
    assert (out / "arch.json").is_file()


def test_training_recreates_a_missing_epoch_file_from_the_same_epoch(inputs, tmp_path):
    import train

    out = tmp_path / "run"
    argv = _train_command(inputs, out, "--epochs", "2", "--max-steps-per-epoch", "1")[2:]
    train.main(argv)
    (out / "epoch_0002.pth").unlink()
    train.main(argv + ["--resume"])
    assert (out / "epoch_0002.pth").read_bytes() == (out / "last.pth").read_bytes()
    assert "re-created" in (out / "train.log").read_text()
