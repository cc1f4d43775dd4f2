"""Binary gates, two-path rescaling, Zero placement, expected latency and the latency losses."""
from __future__ import annotations

import pytest
import torch

from latency.predict import EdgeCosts
from models.naming import parse_block
from models.search_space import EXPERIMENTS, get_space
from nas.latency_loss import expected_latency, latency_loss
from nas.mixed_edge import MixedEdge
from nas.supernet import SuperNet

TOY = [parse_block(n) for n in ("3x3_KKConv_Mid_8_Id", "3x3_DKConv_8_Id", "3x3_MBV1Conv_8_Id", "Zero")]


def _toy_edge() -> MixedEdge:
    edge = MixedEdge(TOY, cin=8)
    with torch.no_grad():
        edge.alpha.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    return edge


def test_gate_gradient_is_the_inner_product_of_output_grad_and_candidate_output() -> None:
    edge = _toy_edge()
    x = torch.randn(2, 8, 6, 6)
    weight = torch.randn(2, 8, 6, 6)
    edge.set_path(1, range(4), "arch")  # single-path: gate gradient over all candidates
    y = edge(x)
    (gates_grad,) = torch.autograd.grad((y * weight).sum(), [edge.gates])
    with torch.no_grad():
        expected = torch.stack([(weight * op(x)).sum() for op in edge.ops])
    torch.testing.assert_close(gates_grad, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y, edge.ops[1](x))  # the forward value is the active candidate's output


def test_alpha_gradient_follows_the_proxylessnas_rule_and_the_exact_soft_gradient() -> None:
    edge = _toy_edge()
    x = torch.randn(2, 8, 6, 6)
    weight = torch.randn(2, 8, 6, 6)
    edge.set_path(2, range(4), "arch")
    (gates_grad,) = torch.autograd.grad((edge(x) * weight).sum(), [edge.gates])
    edge.accumulate_alpha_grad(gates_grad)
    p = torch.softmax(edge.alpha.detach(), 0)
    by_hand = torch.zeros(4)
    for i in range(4):
        for j in range(4):
            by_hand[i] += gates_grad[j] * p[j] * ((1.0 if i == j else 0.0) - p[i])
    torch.testing.assert_close(edge.alpha.grad, by_hand)
    # for a loss linear in the output the rule is exact: the gradient of L(sum_j p_j o_j(x)) w.r.t. alpha
    alpha = edge.alpha.detach().clone().requires_grad_(True)
    with torch.no_grad():
        outs = torch.stack([op(x) for op in edge.ops])
    soft = (torch.softmax(alpha, 0)[:, None, None, None, None] * outs).sum(0)
    (exact,) = torch.autograd.grad((soft * weight).sum(), [alpha])
    torch.testing.assert_close(edge.alpha.grad, exact, rtol=1e-4, atol=1e-4)


def test_two_path_gate_gradient_uses_the_renormalised_pair() -> None:
    edge = _toy_edge()
    x = torch.randn(1, 8, 5, 5)
    edge.set_path(0, (0, 3), "arch")
    (g,) = torch.autograd.grad(edge(x).sum(), [edge.gates])
    assert g[1] == 0 and g[2] == 0  # candidates outside the pair did not run
    edge.accumulate_alpha_grad(g)
    pair = torch.softmax(edge.alpha.detach()[[0, 3]], 0)
    expected = torch.zeros(4)
    expected[0] = pair[0] * g[0] - pair[0] * (pair[0] * g[0] + pair[1] * g[3])
    expected[3] = pair[1] * g[3] - pair[1] * (pair[0] * g[0] + pair[1] * g[3])
    torch.testing.assert_close(edge.alpha.grad, expected)


def test_two_path_step_leaves_unsampled_probabilities_unchanged() -> None:
    edge = _toy_edge()
    optimizer = torch.optim.Adam([edge.alpha], lr=0.1, betas=(0.0, 0.999))
    generator = torch.Generator().manual_seed(3)
    for _ in range(30):
        pair = torch.multinomial(edge.probs.detach(), 2, generator=generator).tolist()
        before = edge.probs.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        edge.set_path(pair[0], pair, "arch")
        (g,) = torch.autograd.grad(edge(torch.randn(1, 8, 4, 4)).square().mean(), [edge.gates])
        edge.accumulate_alpha_grad(g)
        optimizer.step()
        edge.rescale_pair()
        after = edge.probs.detach()
        others = [i for i in range(4) if i not in pair]
        torch.testing.assert_close(after[others], before[others], atol=1e-6, rtol=0)
        assert abs(float(after[pair].sum() - before[pair].sum())) < 1e-6
        assert not torch.allclose(after[pair], before[pair])  # the pair itself did move


def test_weight_step_runs_one_path_and_clears_other_gradients() -> None:
    edge = _toy_edge()
    edge.set_path(1, (1,), "weights")
    edge(torch.randn(1, 8, 4, 4)).sum().backward()
    assert all(p.grad is not None for p in edge.ops[1].parameters())
    assert all(p.grad is None for i in (0, 2) for p in edge.ops[i].parameters())
    assert edge.alpha.grad is None


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_zero_never_on_a_stage_first_edge_and_only_where_shapes_allow(name: str) -> None:
    for edge in get_space(name).edges():
        zero = any(c.family == "Zero" for c in edge.candidates)
        if edge.index == 0:
            assert not zero, edge.where
        else:
            assert zero == (edge.stride == 1 and edge.cin == edge.cout), edge.where


def test_derive_takes_the_argmax_and_drops_zero() -> None:
    net = SuperNet(get_space("R12"))
    for edge in net.edges:
        with torch.no_grad():
            edge.alpha.zero_()
            edge.alpha[edge.zero_index if edge.zero_index is not None else 0] = 1.0
    arch = net.derive("toy")
    assert [len(s) for s in arch.stages] == [1, 1, 1, 1]
    assert [s[0].family for s in arch.stages] == ["KK"] * 4
    assert arch.pre_stage[0].family == "KK_Mid" and arch.maxpool and arch.last_conv.cout == 256


def test_supernet_output_feeds_retinaface() -> None:
    from models.retinaface import RetinaFace

    net = SuperNet(get_space("J15"))
    detector = RetinaFace(net, net.channels)
    generator = torch.Generator().manual_seed(0)
    net.set_paths(net.sample_paths("uniform", generator), "weights")
    loc, logits, landmarks = detector(torch.randn(1, 3, 64, 64))
    assert loc.shape[1] == logits.shape[1] == landmarks.shape[1] == 2 * (64 + 16 + 4)


def test_expected_latency_formula_12_by_hand() -> None:
    net = SuperNet(get_space("R12"))
    costs = EdgeCosts(fixed=5.0, edges=[torch.arange(len(e.ops), dtype=torch.float32) + 1 for e in net.edges])
    paths = [(0, (0,)) for _ in net.edges]
    net.set_paths(paths, "weights")
    by_hand = 5.0
    lats = [torch.tensor(values) for values in costs.edges]
    for edge, lat in zip(net.edges, lats):
        p = torch.softmax(edge.alpha.detach(), 0)
        by_hand += 0.5 * float((p * lat).sum()) + 0.5 * float(p[0] * lat[0])
    assert float(expected_latency(net, costs, p1=0.5).detach()) == pytest.approx(by_hand, rel=1e-6)
    formula_11 = 5.0 + sum(float((torch.softmax(e.alpha.detach(), 0) * lat).sum()) for e, lat in
                           zip(net.edges, lats))
    assert float(expected_latency(net, costs, p1=1.0).detach()) == pytest.approx(formula_11, rel=1e-6)
    assert costs.smallest == pytest.approx(5.0 + sum(1.0 for _ in costs.edges))


@pytest.mark.parametrize("form, expected_value, expected_below", [
    ("abs", 7 * 30 / 200, 7 * 50 / 200), ("proxyless", 7 * 30 / 200, -7 * 50 / 200), ("hinge", 7 * 30 / 200, 0.0),
])
def test_latency_loss_forms(form: str, expected_value: float, expected_below: float) -> None:
    assert float(latency_loss(torch.tensor(230.0), 200.0, 7.0, form)) == pytest.approx(expected_value)
    assert float(latency_loss(torch.tensor(150.0), 200.0, 7.0, form)) == pytest.approx(expected_below)


def test_latency_loss_gradient_pushes_towards_the_target() -> None:
    net = SuperNet(get_space("R12"))
    costs = EdgeCosts(0.0, [torch.tensor([2.0, 1.0, 0.0])[: len(e.ops)] for e in net.edges])
    for target, sign in ((1.0, 1.0), (1000.0, -1.0)):
        for edge in net.edges:
            edge.alpha.grad = None
        loss = latency_loss(expected_latency(net, costs, use_paths=False), target, 1.0)
        loss.backward()
        # too slow -> the gradient raises the cheapest candidate's alpha (negative grad), too fast -> the dearest
        grad = net.edges[1].alpha.grad
        assert sign * grad[2] < 0 if len(grad) == 3 else True
        assert sign * grad[0] > 0


def test_search_weight_steps_leave_unsampled_candidates_bit_for_bit(tmp_path) -> None:
    """SGD momentum and weight decay must not move a candidate that the current step did not run."""
    import json
    import logging

    from engine.distributed import DistInfo
    from latency.analytic import analytic_table
    from latency.internal_mode import LatencyTable
    from latency.predict import edge_costs
    from models.search_space import SearchSpace
    from nas.searcher import Searcher, SearchSettings

    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps({
        "name": "tiny", "preset": "rpi4", "pre_stage": "3x3_KKConv_Mid_8", "maxpool": True, "first_channels": 8,
        "last_channels": 32,
        "stages": [{"families": ["KK", "DK", "MBV1"], "max_blocks": 2, "channels": c} for c in (8, 16, 24, 32)]}))
    space = SearchSpace.load(space_file)
    table = LatencyTable.load(analytic_table("flops", space.latency_keys(64), 64, path=tmp_path / "flops.json").path)
    settings = SearchSettings(target=1.0, lr=0.1, momentum=0.9, weight_decay=5e-2, batch_size=2, img_size=64,
                              out_dir=str(tmp_path), progress=False)
    searcher = Searcher(space, edge_costs(space, table), settings, DistInfo(), logging.getLogger("test"))
    sampled: list[list[tuple[int, tuple[int, ...]]]] = []
    paths_of_step = searcher._weight_paths
    searcher._weight_paths = (  # type: ignore[method-assign]
        lambda warmup: sampled.append(paths_of_step(warmup)[0]) or [sampled[-1]])
    face = [0.2, 0.2, 0.6, 0.6, 0.3, 0.3, 0.5, 0.3, 0.4, 0.4, 0.3, 0.5, 0.5, 0.5, 1.0]
    batch = (torch.randn(2, 3, 64, 64), torch.tensor([[face], [face]]))

    def snapshot() -> list[list[list[torch.Tensor]]]:
        return [[[p.detach().clone() for p in op.parameters()] for op in edge.ops] for edge in searcher.net.edges]

    searcher.weight_step(batch, warmup=False)  # gives the first path momentum buffers
    before = snapshot()
    searcher.weight_step(batch, warmup=False)
    after = snapshot()
    active = {e: set(involved) for e, (_, involved) in enumerate(sampled[-1])}  # one (active, involved) per edge
    moved_active = untouched = 0
    for e, (old_edge, new_edge) in enumerate(zip(before, after)):
        for i, (old_op, new_op) in enumerate(zip(old_edge, new_edge)):
            same = all(torch.equal(a, b) for a, b in zip(old_op, new_op))
            if i in active.get(e, set()):
                moved_active += not same
            elif old_op:
                assert same, f"edge {e} candidate {i} moved although step 2 did not sample it"
                untouched += 1
    assert moved_active > 0 and untouched > 0


def test_gate_gradient_under_autocast_recomputes_candidates_in_the_same_precision() -> None:
    """An architecture step under ``--amp``: backward runs outside the autocast region, so the recomputed
    candidates must re-enter it (before the fix a bfloat16/float16 x met float32 weights and the step crashed)."""
    edge = _toy_edge()
    x = torch.randn(2, 8, 6, 6)
    edge.set_path(1, range(4), "arch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = edge(x)
    (gates_grad,) = torch.autograd.grad(y.float().sum(), [edge.gates])
    with torch.no_grad():
        expected = torch.stack([op(x).sum() for op in edge.ops])
    assert torch.isfinite(gates_grad).all()
    torch.testing.assert_close(gates_grad, expected, rtol=0.05, atol=0.5)
