"""Block nomenclature: a block's spec <-> its name (thesis section 3.3.1.4, Table 18, extended).

The thesis names a block ``[S_][SE_]kxk_<Block>[r][_Mid]_<cout>_<input>``. A latency-table key must name everything
that changes the measured module, so FaceNAS extends the grammar (defaults are omitted, so the names printed in the
thesis are canonical names too)::

    name     := [S_] [SE_ | eSE_] K x K _ body [_ cout] [_ input] [_ act] [_ shortcut]
    body     := MBV1Conv | MBConv<r> | BottleNeckConv<r> | KKConv | KKConv_Mid | DKConv | Conv | MAXPool
    input    := <cin> x <height> x <width>        e.g. 64x80x80 (the tensor the block receives, batch excluded)
    act      := LR (LeakyReLU 0.1, default, omitted) | HS (HardSwish) | RE (ReLU)
    shortcut := Id (identity) | 1x1Conv | 1x1ConvPool (ResNet-D: 2x2 avg-pool + 1x1 conv); none is omitted
    Zero     := Zero [_ input]

``S_`` means stride 2, ``SE_`` squeeze-and-excitation, ``eSE_`` effective SE. Examples: ``S_3x3_DKConv_128``,
``SE_3x3_KKConv_128_128x80x80_Id``, ``S_3x3_BottleNeckConv4_1024_128x80x80_1x1ConvPool``,
``S_3x3_Conv_8_3x320x320`` (a first conv), ``3x3_MAXPool_16x160x160``, ``1x1_Conv_256_128x10x10_HS``.
Batch size, dtype, threads and device are not in the key: they belong to the latency table's metadata.

The thesis prints the first conv as ``3x3_Conv_8`` although it has stride 2; in FaceNAS data it is ``S_3x3_Conv_8``.
Residual-column names of the thesis (``Identity``, ``1x1_Conv_64``, ``1x1_Conv_Pool_128``, ``None``) are read by
:func:`parse_shortcut`.

Standard library only (plus :mod:`utils.errors`): ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from utils.errors import FaceNASError

#: Block families. ``KK_Mid`` is the half KK block, ``Conv`` a plain conv + BN + act (first and last conv),
#: ``MaxPool`` the ResNet-style 3x3 stride-2 pool, ``Zero`` the skipped layer of the search.
FAMILIES = ("MBV1", "MBV2", "BL", "KK", "KK_Mid", "DK", "Conv", "MaxPool", "Zero")
ACTIVATIONS = ("LR", "HS", "RE")
SE_KINDS = (None, "se", "ese")
SHORTCUTS = ("none", "identity", "conv", "conv_pool")

_BODY_OF_FAMILY = {
    "MBV1": "MBV1Conv",
    "MBV2": "MBConv",
    "BL": "BottleNeckConv",
    "KK": "KKConv",
    "KK_Mid": "KKConv_Mid",
    "DK": "DKConv",
    "Conv": "Conv",
    "MaxPool": "MAXPool",
}
_SHORTCUT_TOKEN = {"identity": "Id", "conv": "1x1Conv", "conv_pool": "1x1ConvPool"}
_TOKEN_SHORTCUT = {token: kind for kind, token in _SHORTCUT_TOKEN.items()}

_NAME_RE = re.compile(
    r"^(?P<stride>S_)?(?:(?P<se>SE|eSE)_)?(?P<k1>\d+)[xX](?P<k2>\d+)_"
    r"(?P<body>MBV1Conv|MBConv(?P<mbr>\d+)|BottleNeckConv(?P<blr>\d+)|KKConv_Mid|KKConv|DKConv|Conv|MAXPool|MaxPool)"
    r"(?:_(?P<cout>\d+))?"
    r"(?:_(?P<cin>\d+)x(?P<h>\d+)x(?P<w>\d+))?"
    r"(?:_(?P<act>LR|HS|RE))?"
    r"(?:_(?P<sc>Id|1x1ConvPool|1x1Conv))?$"
)
_ZERO_RE = re.compile(r"^Zero(?:_(?P<cin>\d+)x(?P<h>\d+)x(?P<w>\d+))?$")
_SHORTCUT_RE = re.compile(
    r"^(?:(?P<none>None|none|-)|(?P<id>Identity|identity|Id)|1x1_Conv(?P<pool>_Pool)?(?:_(?P<c>\d+))?)$"
)


@dataclass(frozen=True)
class BlockSpec:
    """Everything that defines one block module (and, with ``cin`` and ``size``, one latency-table entry).

    Attributes:
        family: one of :data:`FAMILIES`.
        kernel: kernel size k of the block's main conv (or pool).
        stride: 1 or 2.
        cout: output channels (for ``MaxPool`` and ``Zero``: equal to ``cin``, or 0 when unknown).
        expansion: MBV2 expansion r (3, 4, 6) or BL reduction r (4); ``None`` for other families.
        se: ``None``, ``"se"`` or ``"ese"``.
        act: activation of the block, one of :data:`ACTIVATIONS`.
        shortcut: residual connection, one of :data:`SHORTCUTS`.
        cin: input channels, or ``None`` when the name does not state the input.
        size: input (height, width), or ``None``.
    """

    family: str
    kernel: int = 3
    stride: int = 1
    cout: int = 0
    expansion: int | None = None
    se: str | None = None
    act: str = "LR"
    shortcut: str = "none"
    cin: int | None = None
    size: tuple[int, int] | None = None

    def with_input(self, cin: int, size: tuple[int, int] | None) -> BlockSpec:
        """Return a copy that states its input channels and size (``MaxPool`` and ``Zero`` keep ``cout == cin``)."""
        cout = cin if self.family in ("MaxPool", "Zero") else self.cout
        size = None if size is None else (int(size[0]), int(size[1]))
        return replace(self, cin=int(cin), size=size, cout=cout)

    def without_input(self) -> BlockSpec:
        """Return a copy without the input tensor (the form stored in architecture files)."""
        cout = 0 if self.family in ("MaxPool", "Zero") else self.cout
        return replace(self, cin=None, size=None, cout=cout)

    def out_size(self) -> tuple[int, int] | None:
        """Output (height, width) for the input size, with the ceil rounding of padded stride-2 convs."""
        if self.size is None:
            return None
        return (-(-self.size[0] // self.stride), -(-self.size[1] // self.stride))

    @property
    def name(self) -> str:
        """The canonical name (see :func:`format_block`)."""
        return format_block(self)

    def validate(self) -> BlockSpec:
        """Check the combination of fields; raise :class:`FaceNASError` naming the block when it is invalid."""
        problem = _spec_problem(self)
        if problem:
            raise FaceNASError(f"block {format_block(self, check=False)!r}: {problem}")
        return self


def _spec_problem(spec: BlockSpec) -> str | None:
    """Return why ``spec`` is not a buildable block, or ``None``."""
    if spec.family not in FAMILIES:
        return f"unknown family {spec.family!r} (expected one of {', '.join(FAMILIES)})"
    if spec.act not in ACTIVATIONS:
        return f"unknown activation {spec.act!r} (expected LR, HS or RE)"
    if spec.se not in SE_KINDS:
        return f"unknown squeeze-excitation kind {spec.se!r} (expected se or ese)"
    if spec.shortcut not in SHORTCUTS:
        return f"unknown shortcut {spec.shortcut!r} (expected one of {', '.join(SHORTCUTS)})"
    if spec.stride not in (1, 2):
        return f"stride must be 1 or 2, not {spec.stride}"
    if spec.kernel < 1 or spec.kernel % 2 == 0:
        return f"kernel must be odd and positive, not {spec.kernel}"
    if spec.family in ("MBV2", "BL") and (spec.expansion is None or spec.expansion < 1):
        return "MBConv needs an expansion r and BottleNeckConv a reduction r (e.g. MBConv6, BottleNeckConv4)"
    if spec.family not in ("MBV2", "BL") and spec.expansion is not None:
        return "only MBConv and BottleNeckConv take an expansion/reduction number"
    if spec.family not in ("MaxPool", "Zero") and spec.cout < 1:
        return "output channels must be positive"
    if spec.family == "BL" and spec.cout % spec.expansion:
        return f"BottleNeckConv{spec.expansion} needs output channels divisible by {spec.expansion}"
    if spec.family == "DK" and spec.stride == 1 and spec.cout % 2:
        return "DKConv (stride 1) needs an even number of output channels"
    if spec.se is not None:
        if spec.family in ("KK_Mid", "Conv", "MaxPool", "Zero"):
            return f"{spec.family} blocks take no squeeze-excitation"
        if spec.family == "DK" and spec.stride == 2:
            return "the stride-2 DKConv is a single conv and takes no squeeze-excitation"
    if spec.family in ("Conv", "MaxPool", "Zero") and spec.shortcut != "none":
        return f"{spec.family} takes no shortcut"
    if spec.family == "MaxPool" and spec.stride != 2:
        return "MAXPool has stride 2"
    if spec.family == "Zero" and spec.stride != 1:
        return "Zero is only allowed at stride 1"
    if spec.shortcut == "identity" and spec.stride != 1:
        return "an Identity shortcut needs stride 1 (use 1x1_Conv_Pool for a stride-2 block)"
    if spec.shortcut == "conv" and spec.stride != 1:
        return "a 1x1_Conv shortcut needs stride 1 (use 1x1_Conv_Pool for a stride-2 block)"
    if spec.shortcut == "conv_pool" and spec.stride != 2:
        return "a 1x1_Conv_Pool shortcut needs stride 2 (use 1x1_Conv or Identity at stride 1)"
    if spec.cin is not None:
        if spec.cin < 1:
            return "input channels must be positive"
        if spec.shortcut == "identity" and spec.cin != spec.cout:
            return f"an Identity shortcut needs equal input and output channels ({spec.cin} -> {spec.cout})"
        if spec.family == "Zero" and spec.cout not in (0, spec.cin):
            return "Zero keeps the channel count"
    if spec.size is not None and min(spec.size) < 1:
        return "input height and width must be positive"
    return None


def format_block(spec: BlockSpec, check: bool = True) -> str:
    """Return the canonical name of ``spec`` (grammar in the module docstring).

    Args:
        spec: the block.
        check: validate first (disable only to name an invalid spec in an error message).
    """
    if check:
        spec.validate()
    parts: list[str] = []
    if spec.family == "Zero":
        parts.append("Zero")
    else:
        if spec.stride == 2 and spec.family != "MaxPool":
            parts.append("S")
        if spec.se:
            parts.append("SE" if spec.se == "se" else "eSE")
        body = _BODY_OF_FAMILY.get(spec.family, str(spec.family))
        if spec.expansion is not None:
            body += str(spec.expansion)
        parts += [f"{spec.kernel}x{spec.kernel}", body]
        if spec.family != "MaxPool":
            parts.append(str(spec.cout))
    if spec.cin is not None and spec.size is not None:
        parts.append(f"{spec.cin}x{spec.size[0]}x{spec.size[1]}")
    if spec.family not in ("MaxPool", "Zero") and spec.act != "LR":
        parts.append(spec.act)
    if spec.shortcut != "none":
        parts.append(_SHORTCUT_TOKEN[spec.shortcut])
    return "_".join(parts)


def parse_block(name: str) -> BlockSpec:
    """Parse a block name into a validated :class:`BlockSpec` (inverse of :func:`format_block`).

    Accepts the thesis spellings ``3X3`` and ``3x3_MaxPool`` besides the canonical forms.

    Raises:
        FaceNASError: the name does not follow the grammar, or names an impossible block.
    """
    text = name.strip()
    zero = _ZERO_RE.match(text)
    if zero:
        cin, size = _input_of(zero)
        return BlockSpec("Zero", kernel=1, stride=1, cout=cin or 0, cin=cin, size=size).validate()
    match = _NAME_RE.match(text)
    if not match:
        raise FaceNASError(
            f"block name {name!r} does not follow [S_][SE_|eSE_]kxk_<Block>_<cout>[_<cin>xHxW][_HS|_RE]"
            "[_Id|_1x1Conv|_1x1ConvPool], e.g. S_3x3_DKConv_128"
        )
    if match["k1"] != match["k2"]:
        raise FaceNASError(f"block name {name!r}: only square kernels are supported")
    body = match["body"]
    family = {
        "MBV1Conv": "MBV1", "KKConv_Mid": "KK_Mid", "KKConv": "KK", "DKConv": "DK", "Conv": "Conv",
        "MAXPool": "MaxPool", "MaxPool": "MaxPool",
    }.get(body, "MBV2" if body.startswith("MBConv") else "BL")
    expansion = match["mbr"] or match["blr"]
    cin, size = _input_of(match)
    if family == "MaxPool":
        if match["cout"] is not None:
            raise FaceNASError(f"block name {name!r}: MAXPool keeps the channel count and takes no <cout>")
        cout = cin or 0
    elif match["cout"] is None:
        raise FaceNASError(f"block name {name!r} lacks its output channels, e.g. 3x3_KKConv_64")
    else:
        cout = int(match["cout"])
    spec = BlockSpec(
        family=family,
        kernel=int(match["k1"]),
        stride=2 if (match["stride"] or family == "MaxPool") else 1,
        cout=cout,
        expansion=int(expansion) if expansion else None,
        se={"SE": "se", "eSE": "ese"}.get(match["se"] or ""),
        act=match["act"] or "LR",
        shortcut=_TOKEN_SHORTCUT.get(match["sc"] or "", "none"),
        cin=cin,
        size=size,
    )
    return spec.validate()


def _input_of(match: re.Match) -> tuple[int | None, tuple[int, int] | None]:
    if match["cin"] is None:
        return None, None
    return int(match["cin"]), (int(match["h"]), int(match["w"]))


def parse_shortcut(text: str, cout: int | None = None) -> str:
    """Read a residual-column name of the thesis (``None``, ``Identity``, ``1x1_Conv_64``, ``1x1_Conv_Pool_128``).

    Also accepts the internal kinds (``none``, ``identity``, ``conv``, ``conv_pool``).

    Args:
        text: the name.
        cout: the block's output channels; when the name carries a channel count it must match.

    Returns:
        One of :data:`SHORTCUTS`.
    """
    if text in SHORTCUTS:
        return text
    match = _SHORTCUT_RE.match(text.strip())
    if not match:
        raise FaceNASError(f"shortcut {text!r} is not one of None, Identity, 1x1_Conv[_C], 1x1_Conv_Pool[_C]")
    if match["none"]:
        return "none"
    if match["id"]:
        return "identity"
    if match["c"] is not None and cout is not None and int(match["c"]) != cout:
        raise FaceNASError(f"shortcut {text!r} has {match['c']} channels but its block outputs {cout}")
    return "conv_pool" if match["pool"] else "conv"


def format_shortcut(kind: str) -> str:
    """Thesis spelling of a shortcut kind, as written in architecture files."""
    return {"none": "None", "identity": "Identity", "conv": "1x1_Conv", "conv_pool": "1x1_Conv_Pool"}[kind]
