"""Known-answer test of the search: the detection loss must reach the architecture parameters.

A tiny space has one searchable edge with two candidates (a 3x3 and a 5x5 depthwise-separable block). The costs of
both are set equal and the latency loss is off (lambda 0), so only the detection loss can tell them apart. The 5x5
candidate is crippled: its input is replaced by a fixed noise pattern, so its output carries nothing of the image and
every network through it detects blindly. After a short warm-up (enough for the healthy path to reach a clearly lower
held-out loss) and a few search epochs, the binary-gate gradients must have moved most of that edge's probability to
the healthy candidate. With the gate gradient's sign flipped the same run must pick the crippled one, so the test fails
when the gradient that reaches alpha is wrong.

Select it alone with ``pytest -k test_search_known_answer``.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from engine.distributed import DistInfo
from latency.predict import EdgeCosts
from models.search_space import SearchSpace
from nas.mixed_edge import MixedEdge
from nas.searcher import Searcher, SearchSettings

# one searchable edge (stage 2: MBV1 k3 / k5); the other stages offer a single DK candidate
SPACE = {"name": "known_answer", "preset": "rpi4", "pre_stage": "3x3_KKConv_Mid_8", "maxpool": True,
         "first_channels": 8, "last_channels": 32,
         "stages": [{"families": ["MBV1" if i == 1 else "DK"], "max_blocks": 1, "channels": c}
                    for i, c in enumerate((8, 16, 24, 32))]}
HEALTHY, CRIPPLED = 0, 1


class CutOff(nn.Module):
    """A candidate whose output no longer depends on its input (same parameters, same shapes).

    Its input is replaced by a fixed noise pattern, not by zeros: a constant input makes the block's output constant,
    and the gate gradient ``<dL/dy, y>`` of a constant of large magnitude is float rounding noise (one memory format
    rounded it towards the crippled candidate). The pattern depends only on the shape, so the gate function's
    recomputation in backward sees the same output as the forward.
    """

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        return self.op(torch.empty_like(x).copy_(noise))  # empty_like keeps x's memory format


def _search(tmp_path, seed: int, channels_last: bool = True) -> torch.Tensor:
    """Run the known-answer search; returns the searched edge's final probabilities."""
    space = SearchSpace.from_dict(SPACE)
    edges = space.edges()
    searched = [i for i, e in enumerate(edges) if len(e.candidates) > 1]
    assert len(searched) == 1 and [c.kernel for c in edges[searched[0]].candidates] == [3, 5]
    costs = EdgeCosts(1.0, [[1.0] * len(e.candidates) for e in edges])  # equal costs: latency says nothing
    settings = SearchSettings(target=5.0, lam=0.0, warmup_epochs=3, search_epochs=3, arch_every=1, batch_size=8,
                              img_size=64, lr=0.01, arch_lr=0.1, max_steps_per_epoch=50, workers=0, progress=False,
                              out_dir=str(tmp_path / f"search_{seed}"), seed=seed,
                              channels_last=channels_last)
    searcher = Searcher(space, costs, settings, DistInfo(), logging.getLogger("known-answer"))
    edge = searcher.net.edges[searched[0]]
    edge.ops[CRIPPLED] = CutOff(edge.ops[CRIPPLED])
    searcher.run()
    return edge.probs.detach()


@pytest.mark.usefixtures("one_thread")
def test_search_known_answer_puts_the_probability_on_the_healthy_candidate(tmp_path) -> None:
    probs = _search(tmp_path, seed=0)
    assert probs[HEALTHY] > 0.9, f"the search did not find the healthy candidate: p = {probs.tolist()}"


@pytest.mark.usefixtures("one_thread")
def test_search_known_answer_fails_when_the_gate_gradient_is_broken(tmp_path, monkeypatch) -> None:
    """The same run with the gate gradient's sign flipped picks the crippled candidate: the test above can fail."""
    original = MixedEdge.accumulate_alpha_grad
    monkeypatch.setattr(MixedEdge, "accumulate_alpha_grad", lambda self, grads: original(self, -grads))
    probs = _search(tmp_path, seed=0)
    assert probs[CRIPPLED] > 0.9, f"a broken gate gradient still found the healthy candidate: p = {probs.tolist()}"


@pytest.mark.usefixtures("one_thread")
def test_search_known_answer_with_the_nchw_supernet(tmp_path) -> None:
    """The search's default is a channels-last supernet; the detection signal must not depend on the memory format."""
    probs = _search(tmp_path, seed=0, channels_last=False)
    assert probs[HEALTHY] > 0.9, f"the NCHW search did not find the healthy candidate: p = {probs.tolist()}"
