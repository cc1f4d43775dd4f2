"""The architecture schema: one JSON description of a FaceNAS backbone, used by the registry, the search output and
the latency predictor alike (documented in ``docs/ARCH.md``).

A backbone is: first conv -> pre-stage blocks -> optional 3x3 MaxPool -> stages of blocks -> optional last 1x1 conv.
Each block is a :class:`~models.naming.BlockSpec`; in a file it is written either as a full name string
(``"S_3x3_DKConv_128_HS_1x1ConvPool"``) or as a dict with the thesis fields::

    {"name": "3x3_DKConv_128", "act": "HS", "shortcut": "Identity", "repeat": 8}

``act`` defaults to LR (LeakyReLU 0.1), ``shortcut`` to None, ``repeat`` to 1. Input channels and sizes are not
stored: they follow from the chain and the input resolution (:meth:`Arch.resolve`).

Standard library only (plus project naming and errors), so the file can travel with ``profile_latency.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from models.naming import BlockSpec, format_block, format_shortcut, parse_block, parse_shortcut
from utils.atomic import atomic_write_json
from utils.errors import FaceNASError
from utils.jsonfile import read_json

ARCH_FORMAT = "facenas-arch/1"
FPN_REDUCTIONS = (8, 16, 32)
MAXPOOL = BlockSpec("MaxPool", kernel=3, stride=2)
#: The thesis' ``_HS`` variants put HardSwish in stages 3 and 4 (0-based 2, 3; later stages too) and the last conv.
HARDSWISH_FIRST_STAGE = 2


def is_hardswish_stage(stage_index: int) -> bool:
    """Whether a stage (0-based) runs HardSwish in an ``_HS`` network: the one rule for archs and search spaces."""
    return stage_index >= HARDSWISH_FIRST_STAGE


@dataclass(frozen=True)
class ResolvedBlock:
    """A block placed in a backbone: where it sits and the spec with its input tensor filled in."""

    where: str  # "first_conv", "pre_stage.0", "maxpool", "stages.2.1" or "last_conv"
    spec: BlockSpec

    @property
    def key(self) -> str:
        """Latency-table key of this block (its full name including the input tensor)."""
        return format_block(self.spec)


@dataclass
class Arch:
    """A backbone architecture (see the module docstring for the file form).

    Attributes:
        name: a short name, e.g. ``R12_V3_HS``.
        first_conv: the stem conv (family ``Conv``, stride 2 in the thesis nets).
        pre_stage: blocks between the first conv and the MaxPool (the thesis' fixed pre-stage MixedEdge).
        maxpool: whether a 3x3 stride-2 MaxPool follows the pre-stage.
        stages: blocks of each stage; the FPN reads the stage outputs at reductions 8 and 16.
        last_conv: 1x1 conv after the last stage (the FPN's stride-32 input), or ``None`` to use the last stage.
        in_chans: input channels.
        meta: free-form facts (source table, target device, predicted latency, search settings).
    """

    name: str
    first_conv: BlockSpec
    pre_stage: list[BlockSpec]
    maxpool: bool
    stages: list[list[BlockSpec]]
    last_conv: BlockSpec | None
    in_chans: int = 3
    meta: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------------------------------------- structure
    def resolve(self, input_size: tuple[int, int] | int = 640) -> list[ResolvedBlock]:
        """Every block in forward order with its input channels and size, validated.

        Args:
            input_size: input (height, width) or one side of a square input.

        Raises:
            FaceNASError: a block does not fit its input (e.g. an Identity shortcut across a channel change).
        """
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        cin, out = self.in_chans, []

        def place(where: str, spec: BlockSpec) -> None:
            nonlocal cin, size
            try:
                placed = spec.with_input(cin, size).validate()
            except FaceNASError as exc:
                raise FaceNASError(f"architecture {self.name!r}, {where}: {exc}") from None
            out.append(ResolvedBlock(where, placed))
            cin, size = placed.cout, placed.out_size()

        place("first_conv", self.first_conv)
        for i, spec in enumerate(self.pre_stage):
            place(f"pre_stage.{i}", spec)
        if self.maxpool:
            place("maxpool", MAXPOOL)
        for s, blocks in enumerate(self.stages):
            for b, spec in enumerate(blocks):
                place(f"stages.{s}.{b}", spec)
        if self.last_conv is not None:
            place("last_conv", self.last_conv)
        return out

    def feature_info(self) -> list[dict[str, Any]]:
        """timm-style ``feature_info``: one entry per stage output and the last conv, in forward order."""
        reduction = self.first_conv.stride
        for spec in self.pre_stage:
            reduction *= spec.stride
        reduction *= 2 if self.maxpool else 1
        info, channels = [], self.first_conv.cout
        for s, blocks in enumerate(self.stages):
            for spec in blocks:
                reduction *= spec.stride
                channels = spec.cout
            info.append({"num_chs": channels, "reduction": reduction, "module": f"stages.{s}"})
        if self.last_conv is not None:
            reduction *= self.last_conv.stride
            info.append({"num_chs": self.last_conv.cout, "reduction": reduction, "module": "last_conv"})
        return info

    def fpn_indices(self) -> tuple[int, int, int]:
        """Indices into :meth:`feature_info` of the FPN inputs: the last outputs at reductions 8, 16 and 32."""
        info = self.feature_info()
        picked = []
        for reduction in FPN_REDUCTIONS:
            matches = [i for i, entry in enumerate(info) if entry["reduction"] == reduction]
            if not matches:
                found = ", ".join(str(e["reduction"]) for e in info)
                raise FaceNASError(
                    f"architecture {self.name!r} has no stage output at stride {reduction} (stage output strides: "
                    f"{found}); the FPN needs outputs at strides 8, 16 and 32"
                )
            picked.append(matches[-1])
        if picked[-1] != len(info) - 1:
            raise FaceNASError(f"architecture {self.name!r} reduces below stride 32 after the FPN's last level")
        return tuple(picked)  # type: ignore[return-value]

    def fpn_stage_taps(self) -> tuple[list[int], bool]:
        """Which stage outputs feed the FPN, and whether the last conv does (then it is the stride-32 level).

        The one FPN-tap rule of the backbone and the supernet (from :meth:`fpn_indices`).
        """
        picked = self.fpn_indices()
        return [i for i in picked if i < len(self.stages)], self.last_conv is not None

    def fpn_channels(self) -> list[int]:
        """Channel counts of the three FPN inputs."""
        info = self.feature_info()
        return [info[i]["num_chs"] for i in self.fpn_indices()]

    def with_hardswish(self) -> Arch:
        """The ``_HS`` form of this network (HardSwish where :func:`is_hardswish_stage` says, and the last conv)."""
        stages = [[replace(spec, act="HS") for spec in blocks] if is_hardswish_stage(s) else list(blocks)
                  for s, blocks in enumerate(self.stages)]
        last = None if self.last_conv is None else replace(self.last_conv, act="HS")
        return replace(self, stages=stages, last_conv=last, meta=dict(self.meta))

    def validate(self, input_size: int = 640) -> Arch:
        """Check the whole architecture (blocks fit their inputs, FPN levels exist); return ``self``."""
        if self.first_conv.family != "Conv":
            raise FaceNASError(f"architecture {self.name!r}: first_conv must be a plain conv such as S_3x3_Conv_8")
        if self.last_conv is not None and self.last_conv.family != "Conv":
            raise FaceNASError(f"architecture {self.name!r}: last_conv must be a plain conv such as 1x1_Conv_256")
        if not self.stages or any(not blocks for blocks in self.stages):
            raise FaceNASError(f"architecture {self.name!r}: every stage needs at least one block")
        for where, spec in [("pre_stage", s) for s in self.pre_stage] + [
            (f"stages.{i}", s) for i, blocks in enumerate(self.stages) for s in blocks
        ]:
            if spec.family in ("Zero", "MaxPool", "Conv"):
                raise FaceNASError(f"architecture {self.name!r}, {where}: {spec.family} is not a stage block")
        self.resolve(input_size)
        self.fpn_indices()
        return self

    # ---------------------------------------------------------------------------------------------- file form
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; consecutive equal blocks are written once with ``repeat``."""
        return {
            "format": ARCH_FORMAT,
            "name": self.name,
            "in_chans": self.in_chans,
            "first_conv": _entry(self.first_conv),
            "pre_stage": _entries(self.pre_stage),
            "maxpool": self.maxpool,
            "stages": [{"blocks": _entries(blocks)} for blocks in self.stages],
            "last_conv": None if self.last_conv is None else _entry(self.last_conv),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "architecture") -> Arch:
        """Build and validate an :class:`Arch` from its dict form; errors name ``source`` and the JSON path."""
        if not isinstance(data, dict):
            raise FaceNASError(f"{source}: expected a JSON object with first_conv, stages, ... (see docs/ARCH.md)")
        fmt = data.get("format", ARCH_FORMAT)
        if fmt != ARCH_FORMAT:
            raise FaceNASError(f"{source}: format {fmt!r} is not {ARCH_FORMAT!r}")
        unknown = set(data) - {"format", "name", "in_chans", "first_conv", "pre_stage", "maxpool", "stages",
                               "last_conv", "meta"}
        if unknown:
            raise FaceNASError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
        for required in ("first_conv", "stages"):
            if required not in data:
                raise FaceNASError(f"{source}: missing field {required!r}")
        stages_raw = data["stages"]
        if not isinstance(stages_raw, list) or not stages_raw:
            raise FaceNASError(f"{source}: 'stages' must be a non-empty list of {{'blocks': [...]}}")
        stages = []
        for i, stage in enumerate(stages_raw):
            blocks = stage.get("blocks") if isinstance(stage, dict) else stage
            stages.append(_read_entries(blocks, f"{source}: stages[{i}].blocks"))
        first = _read_entries([data["first_conv"]], f"{source}: first_conv")
        last_raw = data.get("last_conv")
        last = None if last_raw is None else _read_entries([last_raw], f"{source}: last_conv")
        if len(first) != 1 or (last is not None and len(last) != 1):
            raise FaceNASError(f"{source}: first_conv and last_conv are single blocks (no repeat)")
        arch = cls(
            name=str(data.get("name", "unnamed")),
            first_conv=first[0],
            pre_stage=_read_entries(data.get("pre_stage", []), f"{source}: pre_stage"),
            maxpool=bool(data.get("maxpool", False)),
            stages=stages,
            last_conv=None if last is None else last[0],
            in_chans=int(data.get("in_chans", 3)),
            meta=dict(data.get("meta") or {}),
        )
        try:
            return arch.validate()
        except FaceNASError as exc:
            raise FaceNASError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        """Read an architecture JSON file (errors name the file, and the line for JSON syntax errors)."""
        data, _ = read_json(path, "architecture file")
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> None:
        """Write the architecture as JSON, atomically."""
        atomic_write_json(path, self.to_dict())

    # -------------------------------------------------------------------------------------------- description
    def describe(self) -> str:
        """A text table like the thesis Tables 34 and 44: part, blocks, shortcuts, activation."""
        rows = [("First Conv", [self.first_conv])]
        pre = list(self.pre_stage) + ([MAXPOOL] if self.maxpool else [])
        if pre:
            rows.append(("Pre-Stage", pre))
        rows += [(f"Stage {i + 1}", blocks) for i, blocks in enumerate(self.stages)]
        if self.last_conv is not None:
            rows.append(("Last Conv", [self.last_conv]))
        lines = [(f"{self.name}", "blocks", "shortcut", "act")]
        for part, blocks in rows:
            for n, (spec, count) in enumerate(_runs(blocks)):
                block = _thesis_name(spec)
                shortcut = "-" if spec.family in ("Conv", "MaxPool") else format_shortcut(spec.shortcut)
                act = "-" if spec.family == "MaxPool" else {"LR": "LeakyReLU", "HS": "HardSwish",
                                                            "RE": "ReLU"}[spec.act]
                if count > 1:
                    block, shortcut, act = f"[{block}] x {count}", f"[{shortcut}] x {count}", f"[{act}] x {count}"
                lines.append((part if n == 0 else "", block, shortcut, act))
        widths = [max(len(row[c]) for row in lines) for c in range(4)]
        text = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines]
        text.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(text)


def _thesis_name(spec: BlockSpec) -> str:
    """Name as printed in the thesis tables: without activation and shortcut tokens."""
    return format_block(replace(spec, act="LR", shortcut="none"))


def _runs(blocks: list[BlockSpec]) -> list[tuple[BlockSpec, int]]:
    runs: list[tuple[BlockSpec, int]] = []
    for spec in blocks:
        if runs and runs[-1][0] == spec:
            runs[-1] = (spec, runs[-1][1] + 1)
        else:
            runs.append((spec, 1))
    return runs


def _entry(spec: BlockSpec, repeat: int = 1) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": _thesis_name(spec), "act": spec.act}
    if spec.family not in ("Conv", "MaxPool"):
        entry["shortcut"] = format_shortcut(spec.shortcut)
    if repeat > 1:
        entry["repeat"] = repeat
    return entry


def _entries(blocks: list[BlockSpec]) -> list[dict[str, Any]]:
    return [_entry(spec, count) for spec, count in _runs(blocks)]


def _read_entries(raw: Any, where: str) -> list[BlockSpec]:
    """Parse a list of block entries (strings or dicts) into specs, expanding ``repeat``."""
    if not isinstance(raw, list):
        raise FaceNASError(f"{where}: expected a list of blocks")
    specs: list[BlockSpec] = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        try:
            if isinstance(item, str):
                spec, repeat = parse_block(item), 1
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                unknown = set(item) - {"name", "act", "shortcut", "repeat"}
                if unknown:
                    raise FaceNASError(f"unknown field(s) {', '.join(sorted(unknown))}")
                spec = parse_block(item["name"])
                if "act" in item:
                    spec = replace(spec, act=str(item["act"]))
                if "shortcut" in item:
                    spec = replace(spec, shortcut=parse_shortcut(str(item["shortcut"]), spec.cout))
                repeat = item.get("repeat", 1)
                if not isinstance(repeat, int) or repeat < 1:
                    raise FaceNASError(f"repeat must be a positive integer, not {repeat!r}")
                spec.validate()
            else:
                raise FaceNASError("a block is a name string or an object with a 'name'")
        except FaceNASError as exc:
            raise FaceNASError(f"{here}: {exc}") from None
        if spec.cin is not None:
            raise FaceNASError(f"{here}: architecture files do not state input tensors; drop the _CxHxW part")
        specs += [spec] * repeat
    return specs
