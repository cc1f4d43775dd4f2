"""The supernet-training remedies: sandwich paths, in-place distillation, BatchNorm recalibration, cosine lr."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from engine.distributed import DistInfo
from engine.trainer import CosineSchedule
from latency.predict import EdgeCosts
from models.search_space import SearchSpace
from nas.distill import distillation_loss
from nas.recalibrate import recalibrate_batchnorm
from nas.sandwich import extreme_choices, weight_step_paths
from nas.searcher import Searcher, SearchSettings
from nas.supernet import SuperNet
from utils.errors import FaceNASError

SPACE = {"name": "tiny", "preset": "rpi4", "pre_stage": "3x3_KKConv_Mid_8", "maxpool": True, "first_channels": 8,
         "last_channels": 32,
         "stages": [{"families": ["KK", "DK"], "max_blocks": 2, "channels": c} for c in (8, 16, 24, 32)]}


def _space() -> SearchSpace:
    return SearchSpace.from_dict(SPACE)


def _costs(space: SearchSpace) -> EdgeCosts:
    # a distinct cost per candidate: index + 1, Zero 0
    return EdgeCosts(1.0, [[0.0 if c.family == "Zero" else 1.0 + i for i, c in enumerate(e.candidates)]
                           for e in space.edges()])


def test_extreme_choices_are_the_dearest_and_cheapest_candidates() -> None:
    costs = EdgeCosts(0.0, [[3.0, 1.0, 2.0], [0.5, 0.5, 0.0], [2.0, 2.0]])
    largest, smallest = extreme_choices(costs)
    assert largest == [0, 0, 0] and smallest == [1, 2, 0]  # ties take the first


def test_sandwich_paths_are_largest_smallest_then_sampled() -> None:
    space = _space()
    net, costs = SuperNet(space), _costs(space)
    largest, smallest = extreme_choices(costs)
    paths = weight_step_paths(net, costs, "uniform", torch.Generator().manual_seed(0), True, 3)
    assert len(paths) == 5
    assert [a for a, _ in paths[0]] == largest and [a for a, _ in paths[1]] == smallest
    assert all(involved == (active,) for path in paths for active, involved in path)
    assert costs.of_paths([a for a, _ in paths[0]]) == costs.largest
    assert costs.of_paths([a for a, _ in paths[1]]) == costs.smallest
    single = weight_step_paths(net, costs, "uniform", torch.Generator().manual_seed(0), False, 3)
    assert len(single) == 1 and len(single[0]) == len(costs.edges)
    with pytest.raises(ValueError):
        weight_step_paths(net, costs, "uniform", torch.Generator(), True, -1)


def test_distillation_loss_is_zero_for_the_teacher_and_trains_only_the_student() -> None:
    torch.manual_seed(0)
    teacher = (torch.randn(2, 50, 4), torch.randn(2, 50, 2) * 3, torch.randn(2, 50, 10))
    same = tuple(t.clone().requires_grad_() for t in teacher)
    assert float(distillation_loss(same, teacher, positives=5).detach()) == pytest.approx(0.0, abs=1e-6)
    student = tuple(torch.randn_like(t).requires_grad_() for t in teacher)
    teacher_leaf = tuple(t.clone().requires_grad_() for t in teacher)
    loss = distillation_loss(student, teacher_leaf, positives=5)
    assert float(loss.detach()) > 0
    loss.backward()
    assert all(t.grad is None for t in teacher_leaf)  # the teacher is detached
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    # the class term is normalised by the positives: more positives, smaller loss (regression term unchanged)
    only_cls = (teacher[0], student[1].detach(), teacher[2])
    assert float(distillation_loss(only_cls, teacher, 10)) == pytest.approx(
        float(distillation_loss(only_cls, teacher, 5)) / 2, rel=1e-5)


def test_recalibrate_batchnorm_recomputes_the_statistics_of_the_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, momentum=0.3))
    model[1].running_mean.fill_(5.0)
    model.eval()
    batches = [(torch.randn(4, 3, 8, 8) + i, None) for i in range(3)]
    used = recalibrate_batchnorm(model, batches, max_batches=2)
    assert used == 2 and not model.training and model[1].momentum == 0.3
    with torch.no_grad():
        feats = [model[0](b[0]) for b in batches[:2]]
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)  # the plain average over batches
    assert torch.allclose(model[1].running_mean, expected_mean, atol=1e-5)
    with pytest.raises(ValueError):
        recalibrate_batchnorm(model, batches, 0)


def test_cosine_schedule_warms_up_peaks_and_decays_to_the_final_rate() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = CosineSchedule(opt, 0.01, total_epochs=10, warmup_epochs=1, warmup_start=0.1, final=0.0)
    assert schedule.lr_at(0, 0.0) == pytest.approx(0.001)
    assert schedule.lr_at(1, 0.0) == pytest.approx(0.01)
    assert schedule.lr_at(5, 0.5) == pytest.approx(0.005)  # half way through the decay
    assert schedule.lr_at(9, 1.0) == pytest.approx(0.0, abs=1e-12)
    rates = [schedule.lr_at(e, f) for e in range(1, 10) for f in (0.0, 0.5)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert schedule.step(3) == opt.param_groups[0]["lr"] == schedule.lr_at(3)


def _searcher(tmp_path, **overrides) -> Searcher:
    space = _space()
    settings = SearchSettings(target=10.0, warmup_epochs=1, search_epochs=1, arch_every=2, batch_size=4,
                              img_size=64, lr=0.01, arch_lr=0.05, max_steps_per_epoch=2, workers=0, progress=False,
                              out_dir=str(tmp_path), **overrides)
    return Searcher(space, _costs(space), settings, DistInfo(), logging.getLogger("remedies"))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    targets = torch.tensor([[[0.2, 0.2, 0.6, 0.6, *([0.4] * 10), 1.0]]] * 4)
    return torch.randn(4, 3, 64, 64), targets


def test_sandwich_step_trains_every_path_of_the_step_and_no_other_candidate(tmp_path) -> None:
    searcher = _searcher(tmp_path, sandwich=True, sandwich_random=1, distill=1.0)
    before = {id(p): p.detach().clone() for p in searcher.detector.parameters()}
    record = searcher.weight_step(_batch(), warmup=True)
    assert {"total", "largest", "smallest", "distill"} <= set(record) and math.isfinite(record["distill"])
    assert all(sum(counts) == 3 for counts in searcher.updates)  # three paths ran on every edge
    for e, (edge, counts) in enumerate(zip(searcher.net.edges, searcher.updates)):
        for i, op in enumerate(edge.ops):
            if not list(op.parameters()):
                continue  # Zero
            moved = any(not torch.equal(p, before[id(p)]) for p in op.parameters())
            assert moved == (counts[i] > 0), f"edge {e} candidate {i}: ran {counts[i]} times, moved {moved}"


def test_single_path_default_keeps_one_path_per_step(tmp_path) -> None:
    searcher = _searcher(tmp_path)
    record = searcher.weight_step(_batch(), warmup=True)
    assert "largest" not in record
    assert all(sum(counts) == 1 for counts in searcher.updates)


def test_distill_needs_the_sandwich_rule_and_schedules_are_checked(tmp_path) -> None:
    with pytest.raises(FaceNASError, match="sandwich"):
        _searcher(tmp_path, distill=1.0)
    with pytest.raises(FaceNASError, match="schedule"):
        _searcher(tmp_path, lr_schedule="linear")


def test_cosine_schedule_sets_the_weight_rate_each_step(tmp_path) -> None:
    searcher = _searcher(tmp_path, lr_schedule="cosine", lr_warmup_epochs=1.0)
    searcher.weight_step(_batch(), warmup=True, fraction=0.0)
    assert searcher.weight_opt.param_groups[0]["lr"] == pytest.approx(0.001)
    searcher.epoch = 1
    searcher.weight_step(_batch(), warmup=False, fraction=0.5)
    assert searcher.weight_opt.param_groups[0]["lr"] == pytest.approx(0.005)


def test_a_checkpoint_from_before_the_remedies_resumes_only_with_what_it_was_trained_with(tmp_path) -> None:
    old = _searcher(tmp_path / "old")
    old.save_checkpoint()
    state = torch.load(tmp_path / "old" / "last.pth", weights_only=False)
    for key in ("lr_schedule", "lr_warmup_epochs", "sandwich", "sandwich_random", "distill"):
        del state["settings"][key]  # as written before these settings existed
    torch.save(state, tmp_path / "old" / "last.pth")
    with pytest.raises(FaceNASError, match="lr_schedule 'constant' -> 'cosine'"):
        _searcher(tmp_path / "new", lr_schedule="cosine").load_checkpoint(tmp_path / "old" / "last.pth")
    assert _searcher(tmp_path / "same").load_checkpoint(tmp_path / "old" / "last.pth") == []
