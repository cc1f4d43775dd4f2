"""The budgeted derive: the most probable network within the tolerance, checked against brute force."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from latency.predict import EdgeCosts
from nas.derive import argmax_derive, budget_derive, differing_edges, log_probabilities
from utils.errors import FaceNASError


def _brute_force(log_probs, costs, target, tolerance):
    """Every network of the space: the best one inside the window, else None."""
    best = None
    for choices in itertools.product(*(range(len(edge)) for edge in costs.edges)):
        total = costs.of_paths(list(choices))
        if abs(total - target) <= tolerance * target:
            score = sum(lp[c] for lp, c in zip(log_probs, choices))
            if best is None or score > best[0] + 1e-12:
                best = (score, list(choices), total)
    return best


def test_hand_made_edges_with_a_known_answer():
    # three edges; the argmax (0, 0, 0) costs 10 + 30 = 40 against a target of 25
    costs = EdgeCosts(fixed=10.0, edges=[[10.0, 5.0], [10.0, 5.0, 0.0], [10.0, 2.0]])
    probs = [[0.9, 0.1], [0.6, 0.3, 0.1], [0.7, 0.3]]  # the last candidate of edge 1 is Zero (cost 0)
    log_probs = log_probabilities(probs)
    assert argmax_derive(log_probs, costs).predicted == pytest.approx(40.0)
    result = budget_derive(log_probs, costs, target=25.0, tolerance=0.02)
    # within 25 +- 0.5 the only network is 10 + 5 + 0 + 10: edge 0's cheap candidate, Zero, edge 2's first
    assert result.status == "within" and result.choices == [1, 2, 0] and result.predicted == pytest.approx(25.0)
    assert result.log_prob == pytest.approx(math.log(0.1) + math.log(0.1) + math.log(0.7))
    assert _brute_force(log_probs, costs, 25.0, 0.02)[1] == [1, 2, 0]
    # a looser window admits more probable networks: 10 + 10 + 5 + 2 = 27 is within 10% and beats [1, 2, 0]
    loose = budget_derive(log_probs, costs, target=25.0, tolerance=0.1)
    assert loose.choices == _brute_force(log_probs, costs, 25.0, 0.1)[1] and loose.log_prob > result.log_prob


def test_zero_is_chosen_when_it_is_what_fits():
    # only skipping the middle layer (Zero, cost 0) brings 30 down to the target 20
    costs = EdgeCosts(fixed=0.0, edges=[[10.0], [10.0, 0.0], [10.0]])
    result = budget_derive(log_probabilities([[1.0], [0.99, 0.01], [1.0]]), costs, 20.0, 0.02)
    assert result.status == "within" and result.choices == [0, 1, 0] and result.predicted == 20.0


@pytest.mark.parametrize("seed", range(40))
def test_random_spaces_match_brute_force(seed):
    rng = random.Random(seed)
    edges = [[round(rng.uniform(0.5, 9.0), 3) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(2, 6))]
    if rng.random() < 0.5:
        edges[-1].append(0.0)  # a Zero candidate
    costs = EdgeCosts(fixed=rng.uniform(0, 5), edges=edges)
    raw = [[rng.random() + 1e-3 for _ in edge] for edge in edges]
    log_probs = log_probabilities([[p / sum(edge) for p in edge] for edge in raw])
    target = rng.uniform(costs.smallest, costs.largest)
    tolerance = rng.choice([0.01, 0.02, 0.05])
    expected = _brute_force(log_probs, costs, target, tolerance)
    result = budget_derive(log_probs, costs, target, tolerance)
    if expected is None:
        assert result.status == "closest"
        closest = min(abs(costs.of_paths(list(c)) - target)
                      for c in itertools.product(*(range(len(e)) for e in edges)))
        # closest up to the grid: the derive keeps one network per grid total (steps of tolerance * T / 4n)
        assert closest - 1e-9 <= abs(result.predicted - target) <= closest + tolerance * target / 4
    else:
        assert result.status == "within" and abs(result.predicted - target) <= tolerance * target + 1e-9
        # optimal up to the grid at the window's edges: never worse than brute force by more than a hair
        assert result.log_prob >= expected[0] - 1e-9 or math.isclose(result.log_prob, expected[0], rel_tol=1e-9)


def test_unreachable_targets_take_the_closest_network_and_say_so():
    costs = EdgeCosts(fixed=5.0, edges=[[1.0, 3.0], [2.0, 4.0, 0.0]])
    log_probs = log_probabilities([[0.5, 0.5], [0.2, 0.7, 0.1]])
    low = budget_derive(log_probs, costs, target=2.0)
    assert low.status == "below_range" and low.choices == [0, 2] and low.predicted == 6.0
    assert "below the smallest" in low.message
    high = budget_derive(log_probs, costs, target=100.0)
    assert high.status == "above_range" and high.choices == [1, 1] and high.predicted == 12.0


def test_a_tolerance_no_network_meets_takes_the_closest():
    costs = EdgeCosts(fixed=0.0, edges=[[10.0, 20.0]])
    result = budget_derive(log_probabilities([[0.5, 0.5]]), costs, target=14.0, tolerance=0.01)
    assert result.status == "closest" and result.choices == [0] and result.predicted == 10.0
    assert "no network" in result.message
    # ties in distance go to the more probable network
    result = budget_derive(log_probabilities([[0.3, 0.7]]), costs, target=15.0, tolerance=0.01)
    assert result.choices == [1]


def test_bad_inputs_are_refused():
    costs = EdgeCosts(fixed=0.0, edges=[[1.0, 2.0]])
    with pytest.raises(FaceNASError):
        budget_derive([[0.0]], costs, 1.0)
    with pytest.raises(FaceNASError):
        budget_derive([[0.0, 0.0]], costs, -1.0)


def test_differing_edges():
    assert differing_edges([0, 1, 2], [0, 2, 2], ["a", "b", "c"]) == ["b"]
