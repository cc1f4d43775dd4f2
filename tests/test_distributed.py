"""Two-process gloo DDP on the CPU: one training step keeps the ranks in sync, a NaN on one rank stops both; search.py
and train.py under torchrun with a global --batch-size; --sync-bn; the schedule check for architecture steps."""
from __future__ import annotations

import json
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


TINY_SPACE = {
    "name": "tiny_ddp", "preset": "rpi4", "pre_stage": "3x3_KKConv_Mid_8", "maxpool": True, "first_channels": 8,
    "last_channels": 32,
    "stages": [{"families": ["KK", "DK"], "max_blocks": 1, "channels": c} for c in (8, 16, 24, 32)],
}


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory) -> dict[str, Path]:
    """A tiny space, a FLOPs table for it (no timing) and a small synthetic dataset."""
    from data.synthetic import SyntheticConfig, generate_dataset
    from latency.analytic import analytic_table
    from models.search_space import SearchSpace

    folder = tmp_path_factory.mktemp("tiny_ddp")
    space_file = folder / "space.json"
    space_file.write_text(json.dumps(TINY_SPACE))
    table = folder / "flops.json"
    analytic_table("flops", SearchSpace.load(space_file).latency_keys(64), 64, path=table)
    data = generate_dataset(folder / "data", SyntheticConfig(num_train=24, num_val=2, min_side=64, max_side=96,
                                                             seed=5))
    return {"space": space_file, "table": table, "data": data, "folder": folder}


def _search_args(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--latency-table", str(tiny["table"]), "--target", "5", "--space", str(tiny["space"]), "--data-root",
            str(tiny["data"]), "--warmup-epochs", "1", "--search-epochs", "1", "--out-dir", str(out), "--img-size",
            "64", "--batch-size", "4", "--max-steps-per-epoch", "2", "--arch-every", "2", "--workers", "0",
            "--no-progress", "--device", "cpu", *extra]


def test_search_and_train_under_torchrun_log_world_size_2(tiny_search) -> None:
    """The one meaning of --batch-size: 4 over 2 processes is 2 per process, in search and training alike."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    search_out, train_out = tiny_search["folder"] / "search", tiny_search["folder"] / "train"
    proc = subprocess.run([*torchrun, "search.py", *_search_args(tiny_search, search_out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "world size 2, gloo: batch 4 = 2 x 2 per process" in (search_out / "search.log").read_text()
    arch = json.loads((search_out / "arch.json").read_text())
    assert arch["meta"]["settings"]["world_size"] == 2 and arch["meta"]["settings"]["batch_per_process"] == 2
    state = torch.load(search_out / "last.pth", map_location="cpu", weights_only=False)
    assert state["settings"]["world_size"] == 2 and state["settings"]["batch_size"] == 4

    cmd = [*torchrun, "train.py", "--model", str(search_out / "arch.json"), "--data-root", str(tiny_search["data"]),
           "--out-dir", str(train_out), "--img-size", "64", "--batch-size", "4", "--epochs", "1",
           "--max-steps-per-epoch", "1", "--workers", "0", "--threads", "1", "--no-progress", "--no-eval",
           "--device", "cpu", "--preset", "quick"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(train_out / "last.pth")
    assert ckpt["epoch"] == 0 and ckpt["args"]["world_size"] == 2 and ckpt["args"]["batch_per_process"] == 2
    log = (train_out / "train.log").read_text()
    assert "world size 2, gloo: batch 4 = 2 x 2 per process" in log and "epoch 1/1" in log
    assert "world_size" not in (train_out / "config.yaml").read_text()  # config.yaml holds options only


def test_a_schedule_without_architecture_steps_is_refused(tiny_search, tmp_path) -> None:
    import search
    from utils.errors import FaceNASError

    args = _search_args(tiny_search, tmp_path / "run")
    args[args.index("--arch-every") + 1] = "3"  # 2 weight steps per epoch (--max-steps-per-epoch 2)
    with pytest.raises(FaceNASError, match=r"--arch-every 3 but a search epoch has only 2 weight step\(s\).*"
                                           r"use --arch-every 2 or less"):
        search.main(args)
    assert not (tmp_path / "run" / "last.pth").exists()  # refused before any training


def test_batch_size_is_global_and_must_divide() -> None:
    from engine.distributed import DistInfo, describe_world, split_batch
    from utils.errors import FaceNASError

    two = DistInfo(world_size=2, backend="gloo")
    assert split_batch(8, two) == 4 and split_batch(8, DistInfo()) == 8
    with pytest.raises(FaceNASError, match="--batch-size 5 is the batch over all processes.*multiple of 2"):
        split_batch(5, two)
    assert describe_world(two, 8) == "world size 2, gloo: batch 8 = 2 x 4 per process"
    import search
    import train

    for script in (search, train):  # the same meaning, said in both --help texts
        text = " ".join(script.build_parser().format_help().split())
        assert "over all processes" in text and "divided among torchrun processes" in text


def test_sync_bn_is_a_no_op_alone_refused_on_cpu_and_converts_on_gpus() -> None:
    from engine.distributed import DistInfo, convert_sync_batchnorm
    from models.retinaface import FPN
    from utils.errors import FaceNASError

    model = FPN([8, 16, 32], 16)
    assert convert_sync_batchnorm(model, DistInfo()) is model
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    with pytest.raises(FaceNASError, match="--sync-bn needs CUDA processes"):
        convert_sync_batchnorm(model, DistInfo(world_size=2, backend="gloo"))
    state = model.state_dict()
    gpus = DistInfo(world_size=2, device=torch.device("cuda", 0), backend="nccl")  # converting needs no GPU
    converted = convert_sync_batchnorm(model, gpus)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == 5
    assert converted.state_dict().keys() == state.keys()  # checkpoints load into the plain model
