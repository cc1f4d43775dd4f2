"""Step-speed options (engine/speed.py, issue 24): channels-last gives the same step up to float rounding, CPU
``--amp`` really runs the forward in bfloat16, the CPU-flag check reads what Linux reports, and the scripts record
and log the settings."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

import models
import train
from engine.speed import autocast_dtype, cpu_has_native_bf16, describe_speed, images_in_format, use_channels_last
from engine.trainer import train_step
from models.loss import MultiBoxLoss

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(size: int = 96, faces: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, size, size, generator=generator)
    targets = torch.zeros(2, faces, 15)
    corners = torch.rand(2, faces, 2, generator=generator) * 0.6
    targets[..., 0:2] = corners
    targets[..., 2:4] = corners + 0.15 + 0.2 * torch.rand(2, faces, 2, generator=generator)
    targets[..., 4:14] = targets[..., 0:1].repeat(1, 1, 10) + 0.05
    targets[..., 14] = 1.0
    return images, targets


def _step(detector: torch.nn.Module, channels_last: bool, amp: bool = False) -> dict[str, float]:
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    return train_step(detector.train(), _batch(), MultiBoxLoss(), optimizer, channels_last=channels_last,
                      amp=amp).losses


def test_channels_last_step_equals_the_nchw_step_up_to_rounding():
    torch.manual_seed(0)
    plain = models.build_detector("mobile0.25")
    fast = use_channels_last(copy.deepcopy(plain), True)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really NHWC, not a no-op
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    a, b = _step(plain, False), _step(fast, True)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    changed = 0
    for (name, p), (_, q) in zip(plain.state_dict().items(), fast.state_dict().items()):
        if not p.dtype.is_floating_point:
            assert torch.equal(p, q), name
            continue
        # the updates agree to 0.1% (plus a floor for BatchNorm scales whose gradient nearly cancels, ~1e-6)
        update, other = p - before[name], q - before[name]
        assert (update - other).norm() <= 1e-3 * update.norm() + 1e-6, name
        changed += int(update.norm() > 1e-4)
    assert changed > 10  # the step updated the weights in both layouts


def test_a_channels_last_checkpoint_loads_exactly_into_a_plain_model():
    fast = use_channels_last(models.build_detector("mobile0.25"), True)
    plain = models.build_detector("mobile0.25")
    plain.load_state_dict(fast.state_dict())
    for (name, p), (_, q) in zip(plain.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(p, q), name
    assert images_in_format(torch.zeros(1, 3, 8, 8), True).is_contiguous(memory_format=torch.channels_last)
    assert images_in_format(torch.zeros(1, 3, 8, 8), False).is_contiguous()


def test_cpu_amp_runs_the_forward_in_bfloat16_and_keeps_the_loss_close():
    assert autocast_dtype("cpu") == torch.bfloat16 and autocast_dtype("cuda") == torch.float16
    torch.manual_seed(0)
    detector = models.build_detector("mobile0.25")
    reference = copy.deepcopy(detector)
    seen: list[torch.dtype] = []
    conv = next(m for m in detector.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    mixed = _step(detector, True, amp=True)
    handle.remove()
    assert seen == [torch.bfloat16]
    exact = _step(reference, True, amp=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in mixed.values())
    assert mixed["total"] == pytest.approx(exact["total"], rel=0.05)
    assert mixed["total"] != exact["total"]  # it really rounded


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    cases = {"flags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n": True,
             "flags\t\t: fpu sse avx2 fma\n": False,
             "Features\t: fp asimd evtstrm crc32 cpuid bf16 i8mm\n": True,
             "Features\t: fp asimd evtstrm crc32 cpuid\n": False}
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"cpuinfo{i}"
        path.write_text("processor\t: 0\n" + text)
        assert cpu_has_native_bf16(path) is expected, text
    assert cpu_has_native_bf16(tmp_path / "missing") is False
    assert describe_speed(True, False, "cpu") == "channels-last, float32"
    assert describe_speed(False, True, "cuda", compiled=True) == "NCHW, float16 autocast, torch.compile"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_speed") / "data"
    generate_dataset(root, SyntheticConfig(num_train=4, num_val=2, min_side=64, max_side=96, seed=5))
    return root


@pytest.mark.parametrize("flag, expected, words", [([], True, "channels-last, float32"),
                                                   (["--no-channels-last", "--amp"], False, "NCHW, bfloat16")])
def test_train_records_and_logs_the_speed_settings(tiny_root, tmp_path, flag, expected, words):
    out = tmp_path / "run"
    summary = train.main(["--data-root", str(tiny_root), "--out-dir", str(out), "--img-size", "64", "--batch-size",
                          "2", "--workers", "0", "--threads", "1", "--no-progress", "--no-eval", "--preset", "quick",
                          "--epochs", "1", *flag])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["channels-last"] is expected and config["compile"] is False
    assert words in (out / "train.log").read_text()
    assert summary["history"][0]["steps_per_s"] > 0
