"""The gated supernet built from a :class:`~nas.spaces.SearchSpace`, its path sampling and ``derive()``.

Layout mirrors :class:`~models.backbone.FaceNASBackbone`: fixed first conv and pre-stage block, optional MaxPool,
stages of :class:`~nas.mixed_edge.MixedEdge`, fixed last conv. Its output is the three FPN inputs (strides 8, 16,
32), so :class:`~models.retinaface.RetinaFace` takes it as a backbone.

Sampling state lives on the supernet and its edges (no class-level mode): :meth:`SuperNet.sample_paths` draws paths
from a ``torch.Generator`` the searcher owns (saved in checkpoints, broadcast under DDP) and
:meth:`SuperNet.set_paths` applies them.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from models.arch import Arch
from models.blocks import Block
from nas.mixed_edge import MixedEdge
from nas.spaces import SearchSpace

Path = tuple[int, tuple[int, ...]]  # (active candidate, candidates involved in the gate gradient)


class SuperNet(nn.Module):
    """All candidate paths of a search space.

    Args:
        space: the search space.
        alpha_init_std: alpha initialisation (N(0, std)); ProxylessNAS uses 1e-3.
    """

    def __init__(self, space: SearchSpace, alpha_init_std: float = 1e-3):
        super().__init__()
        self.space = space.validate()
        fixed = dict(space.fixed_specs())
        cin = 3
        stem: list[nn.Module] = [Block(fixed["first_conv"], cin)]
        cin = fixed["first_conv"].cout
        stem.append(Block(fixed["pre_stage.0"], cin))
        cin = fixed["pre_stage.0"].cout
        if space.maxpool:
            stem.append(Block(fixed["maxpool"], cin))
        self.stem = nn.Sequential(*stem)
        self.edge_info = space.edges()
        stages: list[list[MixedEdge]] = [[] for _ in space.stages]
        for info in self.edge_info:
            stages[info.stage].append(MixedEdge(info.candidates, info.cin, alpha_init_std))
        self.stages = nn.ModuleList(nn.ModuleList(edges) for edges in stages)
        last = fixed.get("last_conv")
        self.last_conv: nn.Module = nn.Identity() if last is None else Block(last, space.stages[-1].channels)
        self.edges: list[MixedEdge] = [edge for stage in self.stages for edge in stage]
        self._fpn_stages, self.channels = self._fpn_levels()

    def _fpn_levels(self) -> tuple[list[int], list[int]]:
        """Which stage outputs feed the FPN (the last at strides 8 and 16) and the three channel counts."""
        reduction = 2 * (2 if self.space.maxpool else 1)
        last_at: dict[int, int] = {}
        for s, stage in enumerate(self.space.stages):
            reduction *= stage.stride
            last_at[reduction] = s
        if 8 not in last_at or 16 not in last_at or reduction != 32:
            raise ValueError(f"space {self.space.name} does not give stage outputs at strides 8, 16 and 32")
        taps = [last_at[8], last_at[16]]
        last_channels = self.space.last_channels or self.space.stages[-1].channels
        if not self.space.last_channels:
            taps.append(len(self.space.stages) - 1)
        return taps, [self.space.stages[taps[0]].channels, self.space.stages[taps[1]].channels, last_channels]

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for s, stage in enumerate(self.stages):
            for edge in stage:
                x = edge(x)
            if s in self._fpn_stages:
                outs.append(x)
        if self.space.last_channels:
            outs.append(self.last_conv(x))
        return outs

    # ------------------------------------------------------------------------------------------- parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        return [edge.alpha for edge in self.edges]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def arch_parameter_names(self) -> list[str]:
        ids = {id(p) for p in self.arch_parameters()}
        return [name for name, p in self.named_parameters() if id(p) in ids]

    # ---------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_paths(self, kind: str, generator: torch.Generator, two_path: bool = True) -> list[Path]:
        """Draw one path per edge.

        Args:
            kind: ``uniform`` (warm-up), ``weights`` (one candidate from p) or ``arch`` (one or two from p).
            generator: the searcher's CPU generator (its state is checkpointed).
            two_path: for ``arch``, ProxylessNAS two-path sampling (two distinct candidates, then the active one
                from their renormalised probabilities); otherwise one candidate and the gate gradient over all.
        """
        paths: list[Path] = []
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

    def set_paths(self, paths: list[Path], mode: str) -> None:
        """Apply sampled paths; ``mode`` is ``weights`` or ``arch`` (see :class:`MixedEdge`)."""
        for edge, (active, involved) in zip(self.edges, paths):
            edge.set_path(active, involved, mode)

    def argmax_paths(self) -> list[Path]:
        return [(edge.argmax(), (edge.argmax(),)) for edge in self.edges]

    # ------------------------------------------------------------------------------------------------ derive
    def derive(self, name: str | None = None, meta: dict[str, Any] | None = None) -> Arch:
        """The chosen architecture: argmax of alpha on every edge; a chosen Zero removes the layer."""
        fixed = dict(self.space.fixed_specs())
        stages: list[list[Any]] = [[] for _ in self.space.stages]
        for info, edge in zip(self.edge_info, self.edges):
            spec = edge.candidates[edge.argmax()]
            if spec.family != "Zero":
                stages[info.stage].append(spec)
        pre = fixed["pre_stage.0"]
        arch = Arch(
            name=name or f"{self.space.name}_searched",
            first_conv=fixed["first_conv"],
            pre_stage=[replace(pre, cin=None, size=None)],
            maxpool=self.space.maxpool,
            stages=stages,
            last_conv=fixed.get("last_conv"),
            meta=dict(meta or {}),
        )
        return arch.validate()

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
