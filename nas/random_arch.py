"""Random architectures of a search space (for checking the latency predictor) and choices -> :class:`Arch`.

A draw picks one candidate per MixedEdge uniformly (``Zero`` included where the space allows it), like a supernet
path sampled from uniform architecture weights. ``choices_to_arch`` turns any list of candidate indices into an
architecture: ``Zero`` edges are dropped, the fixed parts (first conv, pre-stage, MaxPool, last conv) come from the
space.

Standard library only (plus project naming, arch and spaces files).
"""
from __future__ import annotations

import random

from models.arch import Arch
from nas.spaces import SearchSpace, get_space
from utils.errors import FaceNASError


def space_by_name(name: str) -> SearchSpace:
    """``get_space`` that also reads the thesis' ``_HS`` suffix (``R5_V2_HS`` = R5_V2 with HardSwish in stages 3-4)."""
    if name.upper().endswith("_HS") and not name.endswith(".json"):
        return get_space(name[:-3], hardswish=True)
    return get_space(name)


def random_choices(space: SearchSpace, rng: random.Random) -> list[int]:
    """One uniformly drawn candidate index per edge of ``space``."""
    return [rng.randrange(len(edge.candidates)) for edge in space.edges()]


def choices_to_arch(space: SearchSpace, choices: list[int], name: str = "random") -> Arch:
    """The architecture that takes candidate ``choices[i]`` on edge ``i`` (``Zero`` removes the layer).

    Raises:
        FaceNASError: wrong number of choices, an index out of range, or a stage left without blocks.
    """
    edges = space.edges()
    if len(choices) != len(edges):
        raise FaceNASError(f"space {space.name} has {len(edges)} edges but {len(choices)} choices were given")
    stages: list[list] = [[] for _ in space.stages]
    for edge, choice in zip(edges, choices):
        if not 0 <= choice < len(edge.candidates):
            raise FaceNASError(f"space {space.name}, {edge.where}: choice {choice} is not in "
                               f"0..{len(edge.candidates) - 1}")
        spec = edge.candidates[choice]
        if spec.family != "Zero":
            stages[edge.stage].append(spec)
    arch = Arch(
        name=name,
        first_conv=space.first_conv(),
        pre_stage=[space.pre_stage_block()],
        maxpool=space.maxpool,
        stages=stages,
        last_conv=space.last_conv(),
        meta={"space": space.name, "choices": list(choices)},
    )
    return arch.validate()


def random_arch(space: SearchSpace, rng: random.Random, name: str = "random") -> Arch:
    """A uniformly drawn architecture of ``space``."""
    return choices_to_arch(space, random_choices(space, rng), name)


def random_archs(spaces: list[SearchSpace], count: int, seed: int, prefix: str = "rand",
                 exclude: set[tuple[str, tuple[int, ...]]] | None = None) -> list[Arch]:
    """``count`` distinct architectures drawn in turn from ``spaces`` with one seeded generator.

    Args:
        spaces: spaces to draw from, round-robin.
        count: how many.
        seed: seed of the generator (the same seed gives the same list).
        prefix: name prefix; names are ``<prefix>_<space>_s<seed>_<i>``.
        exclude: (space name, choices) pairs not to return (e.g. the networks a calibration was fitted on).
    """
    if not spaces:
        raise FaceNASError("no search space to draw random architectures from")
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Arch] = []
    attempts = 0
    while len(out) < count:
        space = spaces[len(out) % len(spaces)]
        choices = tuple(random_choices(space, rng))
        attempts += 1
        if (space.name, choices) in seen:
            if attempts > 100 * (count + 1):
                raise FaceNASError(f"could not draw {count} distinct architectures from {space.name}")
            continue
        seen.add((space.name, choices))
        out.append(choices_to_arch(space, list(choices), f"{prefix}_{space.name}_s{seed}_{len(out):02d}"))
    return out
