"""Two-process gloo DDP on the CPU: one training step keeps the ranks in sync, a NaN on one rank stops both, and
train.py runs one step under torchrun."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    import models
    from engine.distributed import all_reduce_sum, cleanup, init_distributed
    from engine.trainer import NonFiniteLossError, train_step
    from models.loss import MultiBoxLoss

    info = init_distributed("cpu")
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        detector = models.build_detector("mobile0.25")
        model = torch.nn.parallel.DistributedDataParallel(detector)
        optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        images = torch.randn(2, 3, 64, 64, generator=gen)
        targets = torch.zeros(2, 1, 15)
        targets[:, 0, :4] = torch.tensor([0.2, 0.2, 0.6, 0.7]) + 0.05 * rank
        targets[:, 0, 4:14] = 0.4
        targets[:, 0, 14] = 1.0
        criterion = MultiBoxLoss()

        def same_weights() -> bool:
            # The sum over ranks equals world x this rank's weights only when every rank holds the same weights.
            flat = torch.cat([p.detach().reshape(-1) for p in detector.parameters()])
            return bool(torch.allclose(all_reduce_sum(flat.clone(), info), flat * world, rtol=1e-5, atol=1e-6))

        out = train_step(model, (images, targets), criterion, optimizer, dist_info=info, epoch=0, step=0)
        results[f"step{rank}"] = {"backend": info.backend, "world": info.world_size, "same": same_weights(),
                                  "loss": out.losses["total"]}
        before = torch.cat([p.detach().reshape(-1) for p in detector.parameters()]).clone()
        if rank == 1:  # a NaN on rank 1 only
            original = criterion.forward

            def poisoned(*args):
                losses = original(*args)
                losses["total"] = losses["total"] * float("nan")
                return losses

            criterion.forward = poisoned
        try:
            train_step(model, (images, targets), criterion, optimizer, dist_info=info, epoch=0, step=1)
            status = "ok"
        except NonFiniteLossError:
            status = "nonfinite"
        after = torch.cat([p.detach().reshape(-1) for p in detector.parameters()])
        results[f"nan{rank}"] = {"status": status, "unchanged": bool(torch.equal(before, after))}
    finally:
        cleanup(info)


def test_two_process_gloo_ddp_step_and_nan_on_one_rank():
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(_worker, args=(2, _free_port(), results), nprocs=2, join=True, start_method="spawn")
    results = dict(results)
    for rank in (0, 1):
        r = results[f"step{rank}"]
        assert r["backend"] == "gloo" and r["world"] == 2 and r["same"], r
    # The reported loss is the mean over ranks, hence the same on both.
    assert results["step0"]["loss"] == pytest.approx(results["step1"]["loss"])
    # A NaN on one rank stops every rank before the optimizer step, with the weights untouched.
    for rank in (0, 1):
        assert results[f"nan{rank}"] == {"status": "nonfinite", "unchanged": True}


def test_train_py_under_torchrun_two_processes(tmp_path):
    from data.synthetic import SyntheticConfig, generate_dataset

    root = generate_dataset(tmp_path / "data", SyntheticConfig(num_train=8, num_val=2, min_side=64, max_side=96,
                                                                seed=5))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--data-root", str(root), "--out-dir", str(out), "--img-size", "64", "--batch-size", "4", "--epochs",
           "1", "--max-steps-per-epoch", "1", "--workers", "0", "--threads", "1", "--no-progress", "--no-eval",
           "--device", "cpu", "--preset", "quick"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["epoch"] == 0
    log = (out / "train.log").read_text()
    assert "2 process(es) x 2" in log and "epoch 1/1" in log
