"""The gated supernet built from a :class:`~models.search_space.SearchSpace`, its path sampling and ``derive()``.

Layout mirrors :class:`~models.backbone.FaceNASBackbone`, and the fixed parts are built by the same code: the
space's :meth:`~models.search_space.SearchSpace.skeleton` goes through :func:`models.backbone.build_stem`,
:func:`~models.backbone.build_last_conv` and :meth:`~models.arch.Arch.fpn_stage_taps`; the stages hold
:class:`~nas.mixed_edge.MixedEdge` s. Its output is the three FPN inputs (strides 8, 16, 32), so
:class:`~models.retinaface.RetinaFace` takes it as a backbone. :meth:`SuperNet.derive` goes through the space's
:meth:`~models.search_space.SearchSpace.arch_from_choices`, like random draws and the budgeted derive.

Sampling state lives on the supernet and its edges (no class-level mode): :meth:`SuperNet.sample_paths` draws paths
from a ``torch.Generator`` the searcher owns (saved in checkpoints, broadcast under DDP) and
:meth:`SuperNet.set_paths` applies them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.arch import Arch
from models.backbone import build_last_conv, build_stem
from models.search_space import SearchSpace
from nas.mixed_edge import MixedEdge

SampledPath = tuple[int, tuple[int, ...]]  # (active candidate, candidates involved in the gate gradient)


class SuperNet(nn.Module):
    """All candidate paths of a search space.

    Args:
        space: the search space.
        alpha_init_std: alpha initialisation (N(0, std)); ProxylessNAS uses 1e-3.
    """

    def __init__(self, space: SearchSpace, alpha_init_std: float = 1e-3):
        super().__init__()
        self.space = space.validate()
        skeleton = space.skeleton()
        self.stem, _ = build_stem(skeleton)
        self.edge_info = space.edges()
        stages: list[list[MixedEdge]] = [[] for _ in space.stages]
        for info in self.edge_info:
            stages[info.stage].append(MixedEdge(info.candidates, info.cin, alpha_init_std))
        self.stages = nn.ModuleList(nn.ModuleList(edges) for edges in stages)
        self.last_conv = build_last_conv(skeleton, space.stages[-1].channels)
        self.edges: list[MixedEdge] = [edge for stage in self.stages for edge in stage]
        self._fpn_stages, self._fpn_last = skeleton.fpn_stage_taps()
        self.channels = skeleton.fpn_channels()

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for s, stage in enumerate(self.stages):
            for edge in stage:
                x = edge(x)
            if s in self._fpn_stages:
                outs.append(x)
        if self._fpn_last:
            outs.append(self.last_conv(x))
        return outs

    # ------------------------------------------------------------------------------------------- parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        return [edge.alpha for edge in self.edges]

    def arch_parameter_names(self) -> list[str]:
        ids = {id(p) for p in self.arch_parameters()}
        return [name for name, p in self.named_parameters() if id(p) in ids]

    # ---------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_paths(self, kind: str, generator: torch.Generator, two_path: bool = True) -> list[SampledPath]:
        """Draw one path per edge.

        Args:
            kind: ``uniform`` (warm-up), ``weights`` (one candidate from p) or ``arch`` (one or two from p).
            generator: the searcher's CPU generator (its state is checkpointed).
            two_path: for ``arch``, ProxylessNAS two-path sampling (two distinct candidates, then the active one
                from their renormalised probabilities); otherwise one candidate and the gate gradient over all.
        """
        paths: list[SampledPath] = []
        for edge in self.edges:
            n = len(edge.ops)
            if kind == "uniform":
                active = int(torch.randint(n, (1,), generator=generator))
                paths.append((active, (active,)))
                continue
            probs = edge.probs.detach().float().cpu()
            if kind == "weights" or not two_path or n == 1:
                active = int(torch.multinomial(probs, 1, generator=generator))
                paths.append((active, (active,) if kind == "weights" or n == 1 else tuple(range(n))))
                continue
            pair = torch.multinomial(probs, 2, replacement=False, generator=generator).tolist()
            pair_probs = torch.softmax(edge.alpha.detach().float().cpu()[pair], dim=0)
            active = pair[int(torch.multinomial(pair_probs, 1, generator=generator))]
            paths.append((active, (pair[0], pair[1])))
        return paths

    def set_paths(self, paths: list[SampledPath], mode: str) -> None:
        """Apply sampled paths; ``mode`` is ``weights`` or ``arch`` (see :class:`MixedEdge`)."""
        for edge, (active, involved) in zip(self.edges, paths):
            edge.set_path(active, involved, mode)

    # ------------------------------------------------------------------------------------------------ derive
    def derive(self, name: str | None = None, meta: dict[str, Any] | None = None) -> Arch:
        """The chosen architecture: argmax of alpha on every edge; a chosen Zero removes the layer."""
        return self.space.arch_from_choices(self.argmax_choices(), name or f"{self.space.name}_searched", meta)

    def argmax_choices(self) -> list[int]:
        """The most probable candidate of every edge."""
        return [edge.argmax() for edge in self.edges]

    def describe_argmax(self) -> str:
        """Compact one-line view of the current argmax, e.g. ``KK KK Z | DK Mid | ...``."""
        short = {"MBV1": "V1", "MBV2": "V2", "BL": "BL", "KK": "KK", "KK_Mid": "Mid", "DK": "DK", "Zero": "Z"}
        parts = []
        for stage in self.stages:
            words = []
            for edge in stage:
                spec = edge.candidates[edge.argmax()]
                word = short[spec.family]
                if spec.family in ("MBV1", "MBV2", "BL") and spec.kernel != 3:
                    word += f"k{spec.kernel}"
                if spec.family == "MBV2":
                    word += f"e{spec.expansion}"
                words.append(word)
            parts.append(" ".join(words))
        return " | ".join(parts)
