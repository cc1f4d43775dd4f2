"""Search spaces as data: the per-target presets and every thesis experiment (SPEC section 6), plus user files.

A :class:`SearchSpace` fixes the skeleton (first conv, pre-stage block, MaxPool, stages, last conv) and, for every
MixedEdge, the candidate blocks. Candidates of a stage come from its block families (``KK`` means KK and KK_Mid)
and the variations the target allows (Tables 21, 23, 25). ``Zero`` is offered where stride is 1 and channels match,
never on the first edge of a stage. Shortcuts follow the per-target policy:

* ``all`` (DGX-1): stage-first edges get ``1x1_Conv`` (stride 1) or ``1x1_Conv_Pool`` (stride 2), others Identity;
* ``strided`` (Jetson Nano, Tables 49/50): stage-first edges get ``1x1_Conv_Pool`` at stride 2 and none at stride 1;
* ``none`` (Raspberry Pi 4, Tables 38/44/45): stage-first edges have no shortcut, others Identity.

Squeeze-excitation (``se`` = ``"se"`` / ``"ese"``) goes on every candidate of the ``se_stages`` that can take it
(0 = pre-stage). The thesis text says "only blocks with cin == cout", but its own Table 30 puts eSE on stage-first
blocks; FaceNAS follows the table by default (``se_rule="all"``) and offers ``"equal_channels"``.

:meth:`SearchSpace.arch_from_choices` is the one place that turns per-edge choices into an
:class:`~models.arch.Arch` (the supernet's derive, random draws and the budgeted derive all use it), and
:meth:`SearchSpace.skeleton` gives the parts every network of the space shares, from which the supernet builds its
stem and FPN taps with the backbone's own builders.

Standard library only: ``profile_latency.py`` embeds this file to enumerate the blocks of a preset.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from models.arch import Arch, is_hardswish_stage
from models.naming import BlockSpec, format_block, parse_block
from utils.errors import FaceNASError
from utils.jsonfile import read_json

SPACE_FORMAT = "facenas-space/1"
STAGE_FAMILIES = ("MBV1", "MBV2", "BL", "KK", "DK")

#: Allowed variations per target (Tables 21, 23, 25): kernels, and expansions for MBV2 / reduction for BL.
VARIATIONS: dict[str, dict[str, dict[str, list[int]]]] = {
    "dgx": {"MBV1": {"kernels": [3, 5]}, "MBV2": {"kernels": [3, 5], "expansions": [3, 4, 6]},
            "BL": {"kernels": [3, 5], "expansions": [4]}, "KK": {"kernels": [3]}, "DK": {"kernels": [3]}},
    "rpi4": {"MBV1": {"kernels": [3, 5]}, "MBV2": {"kernels": [3], "expansions": [3, 4, 6]},
             "BL": {"kernels": [3], "expansions": [4]}, "KK": {"kernels": [3]}, "DK": {"kernels": [3]}},
    "jetson": {"MBV1": {"kernels": [3, 5]}, "MBV2": {"kernels": [3, 5], "expansions": [3, 4, 6]},
               "BL": {"kernels": [3], "expansions": [4]}, "KK": {"kernels": [3]}, "DK": {"kernels": [3]}},
}

#: Per-target settings (SPEC section 6 table). ``latency_batch`` / ``latency_size`` describe the table's input.
PRESETS: dict[str, dict[str, Any]] = {
    "dgx": {"device": "DGX-1 (V100 GPU)", "target_ms": 5.5, "lambda": 0.75, "latency_batch": 8, "latency_size": 640,
            "search_size": 640, "batch": 24, "last_channels": 2560, "shortcut_policy": "all", "se": "ese",
            "se_stages": [1, 2], "default_experiment": "TT3", "gpu": True},
    "rpi4": {"device": "Raspberry Pi 4 (CPU)", "target_ms": 210.0, "lambda": 7.0, "latency_batch": 1,
             "latency_size": 320, "search_size": 640, "batch": 32, "last_channels": 256, "shortcut_policy": "none",
             "se": None, "se_stages": [], "default_experiment": "R5_V2", "gpu": False},
    "jetson": {"device": "Jetson Nano (GPU)", "target_ms": 45.0, "lambda": 7.0, "latency_batch": 1,
               "latency_size": 640, "search_size": 640, "batch": 32, "last_channels": 256,
               "shortcut_policy": "strided", "se": None, "se_stages": [], "default_experiment": "J1", "gpu": True},
}


def _exp(preset: str, stages: str, channels: str, **overrides: Any) -> dict[str, Any]:
    """Compact experiment row: ``"KK+DK 3 | KK+DK 8 | BL 8 | MBV2 8"`` and ``"128 256 512 640"``."""
    rows = []
    for cell, width in zip(stages.split("|"), channels.split()):
        families, count = cell.split()
        rows.append({"families": families.split("+"), "max_blocks": int(count), "channels": int(width)})
    return {"preset": preset, "stages": rows, **overrides}


_DGX = {"pre_stage": "3x3_KKConv_Mid_32", "maxpool": False}
_RPI = {"pre_stage": "3x3_MBV1Conv_16", "maxpool": True}
_JET = {"pre_stage": "3x3_KKConv_Mid_16", "maxpool": True}

#: Every experiment of the thesis (Tables 27, 29, 36, 40, 47). T1-T12 state no pre-stage width or MaxPool: they
#: use the TT3 width (32) without MaxPool (MaxPool arrived with TT3, thesis 4.1). R11/R12 use the V2 pre-stage.
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "T1": _exp("dgx", "KK+DK 3 | KK+DK 8 | BL 8 | MBV2 8", "128 256 512 640", **_DGX),
    "T2": _exp("dgx", "KK+DK+BL 3 | KK+DK+BL 8 | BL 8 | MBV2 8", "128 256 512 640", **_DGX),
    "T3": _exp("dgx", "KK+DK 3 | KK+DK+BL 8 | KK+DK+BL 8 | KK+DK+BL 8", "128 256 512 1024", **_DGX),
    "T4": _exp("dgx", "KK+DK+BL 3 | KK+DK+BL 8 | KK+DK+BL 8 | KK+DK+BL 8", "128 256 512 1024", **_DGX),
    "T5": _exp("dgx", "BL 2 | BL 8 | BL 8 | BL 8", "128 256 512 1024", **_DGX),
    "T6": _exp("dgx", "KK+DK 3 | KK+DK 8 | KK+DK 8 | KK+DK 8", "128 256 512 1024", **_DGX),
    "T7": _exp("dgx", "MBV2 5 | MBV2 8 | MBV2 8 | MBV2 8", "32 64 128 256", **_DGX),
    "T8": _exp("dgx", "KK+DK+BL 3 | KK+DK+BL 8 | MBV2 8 | MBV2 8", "128 256 192 320", **_DGX),
    "T8_v2": _exp("dgx", "KK+DK 2 | BL 4 | BL 12 | MBV2 12", "128 256 640 640", **_DGX),
    "T9": _exp("dgx", "KK+DK+BL 3 | KK+DK+BL 4 | MBV2 12 | MBV2 12", "64 128 256 384", **_DGX),
    "T10": _exp("dgx", "MBV1 3 | MBV1 5 | MBV1 12 | MBV1 8", "256 512 1024 2048", **_DGX),
    "T11": _exp("dgx", "KK+DK 2 | KK+DK 4 | MBV1 12 | MBV1 8", "64 128 640 1280", **_DGX),
    "T12": _exp("dgx", "MBV1 3 | MBV1 5 | BL 12 | BL 8", "256 512 1024 2048", **_DGX),
    # TT3: ResNet-D start (a full KK pre-stage, 3.3.3.2), MaxPool, eSE in stages 0-3 as Table 30 shows
    "TT3": _exp("dgx", "KK+DK 2 | KK+DK 3 | BL 12 | BL 5", "64 128 1024 2048", pre_stage="3x3_KKConv_32",
                maxpool=True, se_stages=[0, 1, 2, 3]),
    "R1": _exp("rpi4", "MBV1+MBV2 4 | MBV1+MBV2 6 | BL+MBV1+MBV2 9 | BL+MBV1+MBV2 6", "32 64 128 256", **_RPI),
    "R2": _exp("rpi4", "MBV1+MBV2 4 | MBV1+MBV2 6 | MBV1+MBV2 9 | MBV1+MBV2 6", "32 64 128 256", **_RPI),
    "R3": _exp("rpi4", "MBV1 4 | MBV1 6 | MBV1 9 | MBV1 6", "32 64 128 256", **_RPI),
    "R4": _exp("rpi4", "KK+DK 4 | MBV1+KK+DK 6 | MBV1 9 | MBV1 6", "32 64 128 256", **_RPI),
    "R5": _exp("rpi4", "MBV1+KK+DK 4 | MBV1+KK+DK 6 | MBV1+KK+DK 9 | MBV1+KK+DK 6", "32 64 128 256", **_RPI),
    "R6": _exp("rpi4", "KK+DK 4 | KK+DK 6 | KK+DK 9 | KK+DK 6", "32 64 128 256", **_RPI),
    "R7": _exp("rpi4", "MBV1 4 | MBV1 6 | MBV1 9 | MBV1 6", "32 64 128 256",
               variations={"MBV1": {"kernels": [3]}}, **_RPI),
    "R8": _exp("rpi4", "KK+DK 4 | KK+DK 6 | MBV1 9 | MBV1 6", "32 64 128 256", **_RPI),
    "R9": _exp("rpi4", "MBV1 4 | MBV1 6 | MBV2 9 | MBV2 6", "32 64 64 96", **_RPI),
    "R10": _exp("rpi4", "MBV2 4 | MBV2 6 | MBV1 9 | MBV1 6", "24 32 128 256", **_RPI),
    "R11": _exp("rpi4", "DK 4 | DK 6 | DK 9 | DK 6", "32 64 128 256", pre_stage="3x3_KKConv_Mid_16", maxpool=True),
    "R12": _exp("rpi4", "KK 4 | KK 6 | KK 9 | KK 6", "32 64 128 256", pre_stage="3x3_KKConv_Mid_16", maxpool=True),
    # R5 with the KK_Mid pre-stage that its best variant used (R5_V2, Table 39): the rpi4 default
    "R5_V2": _exp("rpi4", "MBV1+KK+DK 4 | MBV1+KK+DK 6 | MBV1+KK+DK 9 | MBV1+KK+DK 6", "32 64 128 256",
                  pre_stage="3x3_KKConv_Mid_16", maxpool=True),
    "J1": _exp("jetson", "KK+DK 2 | KK+DK 3 | KK+DK+BL 12 | KK+DK+BL 6", "32 64 96 128", **_JET),
    "J2": _exp("jetson", "KK+DK 2 | KK+DK 3 | MBV1 12 | MBV1 6", "32 64 128 256", **_JET),
    "J3": _exp("jetson", "MBV2 2 | MBV2 3 | MBV2 12 | MBV2 6", "16 32 64 96", **_JET),
    "J4": _exp("jetson", "MBV1 2 | MBV1 3 | MBV1 12 | MBV1 6", "32 64 96 128", **_JET),
    "J5": _exp("jetson", "KK+DK 2 | KK+DK 3 | MBV1 12 | MBV1 6", "32 64 128 256", **_JET),
    "J6": _exp("jetson", "MBV1 2 | MBV1 3 | BL 12 | BL 6", "32 64 128 256", **_JET),
    "J7": _exp("jetson", "BL 2 | BL 3 | MBV1 12 | MBV1 6", "64 128 192 256", **_JET),
    "J8": _exp("jetson", "KK+DK 2 | KK+DK 3 | MBV2 12 | MBV2 6", "32 64 64 96", **_JET),
    "J9": _exp("jetson", "KK+DK 2 | KK+DK 3 | MBV1+MBV2 12 | MBV1+MBV2 6", "32 64 96 192", **_JET),
    "J10": _exp("jetson", "KK+DK 2 | KK+DK 3 | KK+DK 12 | KK+DK 6", "24 32 64 128", **_JET),
    "J11": _exp("jetson", "BL 2 | BL 3 | BL 12 | BL 6", "32 64 128 256", **_JET),
    "J12": _exp("jetson", "KK+DK+BL 2 | KK+DK+BL 3 | KK+DK+BL 12 | KK+DK+BL 6", "24 32 128 192", **_JET),
    "J13": _exp("jetson", "KK+DK 2 | KK+DK 3 | BL 12 | BL 6", "24 32 128 192", **_JET),
    "J14": _exp("jetson", "DK 2 | DK 3 | DK 12 | DK 6", "24 32 64 128", **_JET),
    "J15": _exp("jetson", "KK 2 | KK 3 | KK 12 | KK 6", "24 32 64 128", **_JET),
}


@dataclass(frozen=True)
class StageSpace:
    """One stage: allowed families, maximum number of blocks (MixedEdges), output channels, stride."""

    families: tuple[str, ...]
    max_blocks: int
    channels: int
    stride: int = 2
    act: str = "LR"


@dataclass(frozen=True)
class Edge:
    """One MixedEdge: its place, tensor shapes and candidate blocks (without input tensors)."""

    where: str  # "stages.<s>.<b>"
    stage: int
    index: int
    cin: int
    cout: int
    stride: int
    candidates: tuple[BlockSpec, ...]

    @property
    def zero_allowed(self) -> bool:
        return any(c.family == "Zero" for c in self.candidates)


@dataclass(frozen=True)
class SearchSpace:
    """A search space (see the module docstring). Build one with :func:`get_space` or :meth:`from_dict`."""

    name: str
    preset: str
    stages: tuple[StageSpace, ...]
    pre_stage: str
    maxpool: bool
    first_channels: int = 8
    last_channels: int = 256
    variations: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    shortcut_policy: str = "none"
    se: str | None = None
    se_stages: tuple[int, ...] = ()
    se_rule: str = "all"
    last_act: str = "LR"

    # --------------------------------------------------------------------------------------------- structure
    def first_conv(self) -> BlockSpec:
        return BlockSpec("Conv", kernel=3, stride=2, cout=self.first_channels)

    def pre_stage_block(self) -> BlockSpec:
        spec = parse_block(self.pre_stage)
        if spec.stride != 1 or spec.family in ("Zero", "MaxPool", "Conv"):
            raise FaceNASError(f"space {self.name}: pre-stage {self.pre_stage!r} must be a stride-1 stage block")
        return self._with_se(spec, 0, cin=self.first_channels)

    def last_conv(self) -> BlockSpec | None:
        if not self.last_channels:
            return None
        return BlockSpec("Conv", kernel=1, stride=1, cout=self.last_channels, act=self.last_act)

    def _with_se(self, spec: BlockSpec, stage_number: int, cin: int) -> BlockSpec:
        """Add the space's SE kind when the stage has SE and the block can take it."""
        if not self.se or stage_number not in self.se_stages:
            return spec
        if spec.family in ("KK_Mid", "Zero") or (spec.family == "DK" and spec.stride == 2):
            return spec
        if self.se_rule == "equal_channels" and cin != spec.cout:
            return spec
        return replace(spec, se=self.se)

    def family_variants(self, family: str) -> list[dict[str, Any]]:
        """Block variants of a stage family under this space's variations (``KK`` gives KK and KK_Mid)."""
        var = self.variations.get(family) or VARIATIONS[self.preset].get(family, {})
        kernels = var.get("kernels", [3])
        expansions = var.get("expansions", [None])
        if family == "KK":
            return [{"family": f, "kernel": k} for f in ("KK", "KK_Mid") for k in kernels]
        if family in ("MBV2", "BL"):
            return [{"family": family, "kernel": k, "expansion": r} for k in kernels for r in expansions]
        return [{"family": family, "kernel": k} for k in kernels]

    def edges(self) -> list[Edge]:
        """Every MixedEdge with its candidates, in forward order."""
        cin = self.pre_stage_block().cout
        out = []
        for s, stage in enumerate(self.stages):
            for b in range(stage.max_blocks):
                first = b == 0
                stride = stage.stride if first else 1
                shortcut = self._shortcut(first, stride, cin, stage.channels)
                candidates = []
                for family in stage.families:
                    for variant in self.family_variants(family):
                        spec = BlockSpec(cout=stage.channels, stride=stride, act=stage.act, shortcut=shortcut,
                                         **variant)
                        candidates.append(self._with_se(spec, s + 1, cin).validate())
                if not first and stride == 1 and cin == stage.channels:
                    candidates.append(BlockSpec("Zero", kernel=1, stride=1))
                out.append(Edge(f"stages.{s}.{b}", s, b, cin, stage.channels, stride, tuple(candidates)))
                cin = stage.channels
        return out

    def _shortcut(self, first: bool, stride: int, cin: int, cout: int) -> str:
        if not first:
            return "identity" if cin == cout and stride == 1 else "none"
        if self.shortcut_policy == "all":
            if stride == 2:
                return "conv_pool"
            return "conv" if cin != cout else "identity"
        if self.shortcut_policy == "strided" and stride == 2:
            return "conv_pool"
        return "none"

    def placed(self, input_size: int | tuple[int, int]) -> tuple[list[tuple[str, BlockSpec]], list[list[BlockSpec]]]:
        """Fixed parts and edge candidates with their input tensors for an input resolution.

        Returns:
            ``(fixed, edges)``: fixed = [(where, spec)] in forward order (last conv last); edges = one list of
            candidate specs per MixedEdge (``Zero`` included, with its input too).
        """
        resolved = self.skeleton().resolve(input_size)  # every edge takes a real block in the skeleton: 1:1
        fixed = [(b.where, b.spec) for b in resolved if not b.where.startswith("stages.")]
        inputs = [b.spec for b in resolved if b.where.startswith("stages.")]
        return fixed, [[c.with_input(s.cin, s.size).validate() for c in edge.candidates]
                       for edge, s in zip(self.edges(), inputs)]

    def keys(self, input_size: int | tuple[int, int]) -> tuple[list[str], list[list[str | None]]]:
        """Table keys of the fixed parts and of every edge's candidates (``None`` for Zero) at a resolution."""
        fixed, edges = self.placed(input_size)
        return ([format_block(spec) for _, spec in fixed],
                [[None if c.family == "Zero" else format_block(c) for c in candidates] for candidates in edges])

    def latency_keys(self, input_size: int | tuple[int, int]) -> list[str]:
        """Every latency-table key the space needs at this resolution (fixed parts and candidates; Zero costs 0)."""
        fixed, edges = self.keys(input_size)
        return list(dict.fromkeys(fixed + [k for candidates in edges for k in candidates if k is not None]))

    # ------------------------------------------------------------------------------------- choices -> arch
    def arch_from_choices(self, choices: list[int], name: str | None = None,
                          meta: dict[str, Any] | None = None) -> Arch:
        """The architecture that takes candidate ``choices[i]`` on edge ``i`` (``Zero`` removes the layer).

        The fixed parts (first conv, pre-stage, MaxPool, last conv) come from the space; ``meta`` gets the space's
        name and the choices.

        Raises:
            FaceNASError: wrong number of choices, or an index out of range.
        """
        edges = self.edges()
        if len(choices) != len(edges):
            raise FaceNASError(f"space {self.name} has {len(edges)} edges but {len(choices)} choices were given")
        stages: list[list[BlockSpec]] = [[] for _ in self.stages]
        for edge, choice in zip(edges, choices):
            if not 0 <= int(choice) < len(edge.candidates):
                raise FaceNASError(f"space {self.name}, {edge.where}: choice {choice} is not in "
                                   f"0..{len(edge.candidates) - 1}")
            spec = edge.candidates[int(choice)]
            if spec.family != "Zero":
                stages[edge.stage].append(spec)
        arch = Arch(name=name or f"{self.name}_arch", first_conv=self.first_conv(), pre_stage=[self.pre_stage_block()],
                    maxpool=self.maxpool, stages=stages, last_conv=self.last_conv(),
                    meta={"space": self.name, "choices": [int(c) for c in choices], **(meta or {})})
        return arch.validate()

    def skeleton(self) -> Arch:
        """A network of the space (each edge's first candidate): what every choice shares (stem, stage widths and
        strides, last conv, FPN taps), for the supernet to build with the backbone's builders."""
        return self.arch_from_choices([0] * len(self.edges()), f"{self.name}_skeleton")

    def with_hardswish(self) -> SearchSpace:
        """The thesis' _HS form: HardSwish in stages 3 and on and in the last conv (see
        :func:`models.arch.is_hardswish_stage`)."""
        stages = tuple(replace(s, act="HS") if is_hardswish_stage(i) else s for i, s in enumerate(self.stages))
        return replace(self, stages=stages, last_act="HS", name=self.name + "_HS").validate()

    def validate(self) -> SearchSpace:
        """Check families, strides (>= 4 stride-2 steps, 3 with MaxPool) and the policies."""
        if self.preset not in VARIATIONS:
            raise FaceNASError(f"space {self.name}: unknown preset {self.preset!r} (dgx, rpi4 or jetson)")
        if self.shortcut_policy not in ("all", "strided", "none"):
            raise FaceNASError(f"space {self.name}: shortcut_policy must be all, strided or none")
        if self.se not in (None, "se", "ese") or self.se_rule not in ("all", "equal_channels"):
            raise FaceNASError(f"space {self.name}: se must be null, se or ese; se_rule all or equal_channels")
        for i, stage in enumerate(self.stages):
            unknown = set(stage.families) - set(STAGE_FAMILIES)
            if unknown or not stage.families:
                raise FaceNASError(f"space {self.name}: stage {i + 1} families {sorted(unknown) or '[]'} not in "
                                   f"{', '.join(STAGE_FAMILIES)}")
            if stage.max_blocks < 1 or stage.channels < 1 or stage.stride not in (1, 2):
                raise FaceNASError(f"space {self.name}: stage {i + 1} needs max_blocks >= 1, channels >= 1, "
                                   "stride 1 or 2")
        needed = 3 if self.maxpool else 4
        if sum(stage.stride == 2 for stage in self.stages) < needed:
            raise FaceNASError(f"space {self.name}: needs at least {needed} stride-2 stages "
                               f"({'with' if self.maxpool else 'without'} MaxPool) to reach stride 32")
        self.edges()
        return self

    # ---------------------------------------------------------------------------------------------- file form
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [{**asdict(s), "families": list(s.families)} for s in self.stages]
        data["se_stages"] = list(self.se_stages)
        return {"format": SPACE_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "space") -> SearchSpace:
        """Build a space from its dict form; unstated fields come from the preset."""
        if not isinstance(data, dict):
            raise FaceNASError(f"{source}: a search space is a JSON object (see docs/SEARCH.md)")
        data = {k: v for k, v in data.items() if k != "format"}
        preset = data.get("preset")
        if preset not in PRESETS:
            raise FaceNASError(f"{source}: 'preset' must be one of {', '.join(PRESETS)}, not {preset!r}")
        p = PRESETS[preset]
        maxpool = bool(data.get("maxpool", True))
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise FaceNASError(f"{source}: 'stages' must be a non-empty list")
        strides = data.get("strides") or [1 if (maxpool and i == 0) else 2 for i in range(len(raw_stages))]
        acts = data.get("acts") or ["LR"] * len(raw_stages)
        stages = []
        try:
            for i, st in enumerate(raw_stages):
                stages.append(StageSpace(tuple(st["families"]), int(st["max_blocks"]), int(st["channels"]),
                                         int(st.get("stride", strides[i])), str(st.get("act", acts[i]))))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FaceNASError(f"{source}: stage entries need families, max_blocks and channels ({exc})") from None
        known = {f.name for f in cls.__dataclass_fields__.values()} | {"strides", "acts"}  # type: ignore[attr-defined]
        unknown = set(data) - known
        if unknown:
            raise FaceNASError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
        space = cls(
            name=str(data.get("name", "custom")),
            preset=preset,
            stages=tuple(stages),
            pre_stage=str(data.get("pre_stage", "3x3_KKConv_Mid_16")),
            maxpool=maxpool,
            first_channels=int(data.get("first_channels", 8)),
            last_channels=int(data.get("last_channels", p["last_channels"])),
            variations=dict(data.get("variations") or {}),
            shortcut_policy=str(data.get("shortcut_policy", p["shortcut_policy"])),
            se=data.get("se", p["se"]),
            se_stages=tuple(data.get("se_stages", p["se_stages"])),
            se_rule=str(data.get("se_rule", "all")),
            last_act=str(data.get("last_act", "LR")),
        )
        try:
            return space.validate()
        except FaceNASError as exc:
            raise FaceNASError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        data, _ = read_json(path, "search space file")
        return cls.from_dict(data, str(path))


def get_space(name_or_path: str, hardswish: bool = False, **overrides: Any) -> SearchSpace:
    """A space by experiment name (``R5``, ``TT3``, ``J15``...), preset name (its default experiment) or JSON file.

    Args:
        name_or_path: experiment, preset or path; an experiment name may carry the thesis' ``_HS`` suffix
            (``R5_V2_HS`` = R5_V2 with HardSwish in stages 3-4).
        hardswish: the thesis' _HS variant (:meth:`SearchSpace.with_hardswish`).
        **overrides: fields replacing the experiment's (e.g. ``last_channels=128``).
    """
    text = str(name_or_path)
    if text.upper().endswith("_HS") and not text.endswith(".json"):
        name_or_path, hardswish = text[:-3], True
    if str(name_or_path).endswith(".json"):
        space = SearchSpace.load(name_or_path)
    else:
        key = {k.lower(): k for k in EXPERIMENTS}.get(str(name_or_path).lower())
        if key is None and str(name_or_path).lower() in PRESETS:
            key = PRESETS[str(name_or_path).lower()]["default_experiment"]
        if key is None:
            raise FaceNASError(f"unknown search space {name_or_path!r}: use a preset ({', '.join(PRESETS)}), an "
                               f"experiment ({', '.join(EXPERIMENTS)}) or a .json file")
        space = SearchSpace.from_dict({"name": key, **EXPERIMENTS[key]}, f"experiment {key}")
    if hardswish:
        space = space.with_hardswish()
    if overrides:
        space = SearchSpace.from_dict({**space.to_dict(), **overrides}, f"space {space.name}")
    return space.validate()


def preset_spaces(preset: str) -> list[SearchSpace]:
    """Every experiment of a preset, plus its _HS form (what a preset's latency table must cover)."""
    names = [k for k, v in EXPERIMENTS.items() if v["preset"] == preset]
    spaces = [get_space(n) for n in names]
    if preset != "dgx":
        spaces += [get_space(n, hardswish=True) for n in names]
    return spaces
