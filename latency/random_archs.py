"""Random architectures of a search space, for fitting and checking the latency predictor.

A draw picks one candidate per MixedEdge uniformly (``Zero`` included where the space allows it), like a supernet
path sampled from uniform architecture weights, and turns the choices into an architecture with
:meth:`models.search_space.SearchSpace.arch_from_choices`.

Standard library only (plus project naming, arch and spaces files): ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import random

from models.arch import Arch
from models.search_space import SearchSpace
from utils.errors import FaceNASError


def random_choices(space: SearchSpace, rng: random.Random) -> list[int]:
    """One uniformly drawn candidate index per edge of ``space``."""
    return [rng.randrange(len(edge.candidates)) for edge in space.edges()]


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
        out.append(space.arch_from_choices(list(choices), f"{prefix}_{space.name}_s{seed}_{len(out):02d}"))
    return out


def validation_and_fit_archs(spaces: list[SearchSpace], validate: int, seed: int, fit: int,
                             fit_seed: int) -> tuple[list[Arch], list[Arch]]:
    """``validate`` networks drawn with ``seed`` and ``fit`` others drawn with ``fit_seed``: a predictor is fitted on
    the second list and judged on the first, which it never saw."""
    if validate and fit and seed == fit_seed:
        raise FaceNASError("the fitting seed must differ from the validation seed (fitting and validation networks "
                           "must differ)")
    checked = random_archs(spaces, validate, seed, prefix="val") if validate else []
    taken = {(a.meta["space"], tuple(a.meta["choices"])) for a in checked}
    return checked, random_archs(spaces, fit, fit_seed, prefix="fit", exclude=taken) if fit else []
