"""Published FaceNAS backbones and the RetinaFace MobileNetV1-0.25 baseline in timm's model registry.

``import models`` registers every entrypoint below, so ``timm.create_model('facenas_r12_v3_hs', features_only=True)``
works. The architectures are data: the tables of the thesis live in ``models/archs/*.json``; the variants the thesis
derives from them (V2/V3 pre-stage, _HS activations, SE kinds; sections 4.1-4.3) are built by the small recipes
below. ``facenas_arch`` builds any architecture file: ``timm.create_model('facenas_arch', arch='arch.json')``
(without ``arch`` the RetinaFace mobile0.25 backbone, see its docstring).

The default cfgs are written for timm's RGB transforms (mean/std, squash resize, ``pool_size``); the project's own
pipelines stay BGR, so train.py checkpoints want ``x.flip(1)`` after a timm transform (README, weights/README.md).

Local weights: ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='ckpt.pth'))`` loads a
FaceNAS backbone or detector checkpoint; keys and shapes are checked against the architecture (``weights/README.md``).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from data.augment import BGR_MEAN
from models.arch import Arch
from models.backbone import FaceNASBackbone
from models.naming import parse_block
from utils.errors import FaceNASError

__all__ = ["ALIASES", "ZOO", "published_arch", "resolve_model_name"]

ARCH_DIR = Path(__file__).parent / "archs"
# RetinaFace feeds 0-255 pixels minus its mean colour, unscaled. timm's eval transform gives (x / 255 - mean) / std on
# an RGB image, so mean = RetinaFace's mean / 255 in RGB order and std = 1 / 255 give 255 x - mean, the same numbers.
# The project's own pipelines (data/augment.py) stay BGR, so checkpoints trained by train.py take BGR input: a timm
# pipeline feeding them flips the channels (x.flip(1)).
RETINAFACE_MEAN = tuple(v / 255 for v in reversed(BGR_MEAN))  # RGB order: 123, 117, 104 over 255
RETINAFACE_STD = (1 / 255, 1 / 255, 1 / 255)
INPUT_SIZE = 640  # trained and searched at 640x640 (thesis 3.7)
OUTPUT_STRIDE = 32


# ------------------------------------------------------------------------------------------ variant recipes
def _with_pre_stage(arch: Arch, block: str) -> Arch:
    """V2 / V3: the pre-stage block replaced by KK_Mid / DK (thesis 4.2, R5_V2 and R5_V3)."""
    spec = parse_block(block)
    arch.pre_stage = [replace(spec, act=arch.pre_stage[0].act)]
    return arch


def _all_act(arch: Arch, act: str) -> Arch:
    """Every stage and the last conv with one activation (R11_V2, R12_V3: Table 44/45 without HardSwish)."""
    arch.stages = [[replace(spec, act=act) for spec in blocks] for blocks in arch.stages]
    if arch.last_conv is not None:
        arch.last_conv = replace(arch.last_conv, act=act)
    return arch


def _hardswish(arch: Arch) -> Arch:
    """_HS: HardSwish in stages 3-4 and the last conv (Tables 42, 44, 45, 51, 53; :meth:`Arch.with_hardswish`)."""
    return arch.with_hardswish()


def _with_se(arch: Arch, kind: str | None) -> Arch:
    """TT3 / TT3_SE / TT3_NoSE: the same blocks with eSE, SE or no squeeze-excitation (Table 32)."""

    def swap(spec):
        return replace(spec, se=kind) if spec.se else spec

    arch.pre_stage = [swap(s) for s in arch.pre_stage]
    arch.stages = [[swap(s) for s in blocks] for blocks in arch.stages]
    return arch


# name -> (base file in models/archs/, recipe steps applied to it in order, where the thesis gives it)
_Recipe = Callable[[Arch], Arch]
ZOO: dict[str, tuple[str, list[_Recipe], str]] = {
    "TT3": ("tt3", [], "Table 30"),
    "TT3_SE": ("tt3", [lambda a: _with_se(a, "se")], "Table 32: TT3 with SE"),
    "TT3_NoSE": ("tt3", [lambda a: _with_se(a, None)], "Table 34"),
    "R5": ("r5", [], "Table 38"),
    "R5_V2": ("r5", [lambda a: _with_pre_stage(a, "3x3_KKConv_Mid_16")], "Table 39"),
    "R5_V3": ("r5", [lambda a: _with_pre_stage(a, "3x3_DKConv_16")], "Table 39"),
    "R5_V2_HS": ("r5", [lambda a: _with_pre_stage(a, "3x3_KKConv_Mid_16"), _hardswish], "Table 42"),
    "R5_V3_HS": ("r5", [lambda a: _with_pre_stage(a, "3x3_DKConv_16"), _hardswish], "Table 42"),
    "R11_V2": ("r11_v2_hs", [lambda a: _all_act(a, "LR")], "Table 41 (Table 44 without HardSwish)"),
    "R11_V3": ("r11_v2_hs", [lambda a: _all_act(a, "LR"), lambda a: _with_pre_stage(a, "3x3_DKConv_16")],
               "Table 41 (Table 44, DK pre-stage, LeakyReLU)"),
    "R11_V2_HS": ("r11_v2_hs", [], "Table 44"),
    "R11_V3_HS": ("r11_v2_hs", [lambda a: _with_pre_stage(a, "3x3_DKConv_16")], "Table 42 (Table 44, DK pre-stage)"),
    "R12_V2": ("r12_v3_hs", [lambda a: _all_act(a, "LR"), lambda a: _with_pre_stage(a, "3x3_KKConv_Mid_16")],
               "Table 41 (Table 45, KK_Mid pre-stage, LeakyReLU)"),
    "R12_V3": ("r12_v3_hs", [lambda a: _all_act(a, "LR")], "Table 41 (Table 45 without HardSwish)"),
    "R12_V2_HS": ("r12_v3_hs", [lambda a: _with_pre_stage(a, "3x3_KKConv_Mid_16")], "Table 42 (Table 45, KK_Mid)"),
    "R12_V3_HS": ("r12_v3_hs", [], "Table 45"),
    "J1": ("j1", [], "Table 49"),
    "J1_HS": ("j1", [_hardswish], "Table 51"),
    "J15": ("j15", [], "Table 50"),
    "J15_HS": ("j15", [_hardswish], "Table 53"),
    "mobilenetv1_0.25": ("mobilenetv1_025", [], "RetinaFace mobile0.25"),
}

#: Thesis and community spellings -> registry names. Lookup is case-insensitive (see :func:`resolve_model_name`).
ALIASES = {name.lower(): "facenas_" + name.lower().replace(".", "") for name in ZOO if name != "mobilenetv1_0.25"}
ALIASES.update({
    "tt3_ese": "facenas_tt3", "tt3_ese(base)": "facenas_tt3",
    "mobilenetv1_0.25": "facenas_mobilenetv1_025", "mobile0.25": "facenas_mobilenetv1_025",
    "mobilenet0.25": "facenas_mobilenetv1_025", "mnet0.25": "facenas_mobilenetv1_025",
    "resnet50": "resnet50", "resnet-50": "resnet50", "r50": "resnet50",
})


@cache
def _base_arch(file_stem: str) -> str:
    return (ARCH_DIR / f"{file_stem}.json").read_text(encoding="utf-8")


def published_arch(name: str) -> Arch:
    """The :class:`Arch` of a published network by its thesis name (``R12_V3_HS``) or registry name."""
    key = {n.lower(): n for n in ZOO}.get(name.lower().removeprefix("facenas_").replace("mobilenetv1_025",
                                                                                     "mobilenetv1_0.25"))
    if key is None:
        raise FaceNASError(f"unknown published architecture {name!r}; known: {', '.join(ZOO)}")
    stem, recipe, source = ZOO[key]
    arch = Arch.from_dict(json.loads(_base_arch(stem)), f"models/archs/{stem}.json")
    for step in recipe:
        arch = step(arch)
    arch.name = key
    arch.meta = {**copy.deepcopy(arch.meta), "source": f"thesis {source}" if source.startswith("Table") else source}
    return arch.validate()


def resolve_model_name(name: str) -> str:
    """Map a thesis spelling (``TT3_NoSE``, ``mobile0.25``, ``ResNet50``) to its timm registry name.

    Registry names and unknown names pass through unchanged (timm reports unknown ones).
    """
    return ALIASES.get(name.lower(), name)


# --------------------------------------------------------------------------------------------------- cfgs
def _cfg(description: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, INPUT_SIZE, INPUT_SIZE),
        "pool_size": (INPUT_SIZE // OUTPUT_STRIDE, INPUT_SIZE // OUTPUT_STRIDE),
        "crop_pct": 1.0,
        "crop_mode": "squash",  # with crop_pct 1.0 timm's eval transform is a plain resize to input_size, no crop
        "interpolation": "bilinear",
        "mean": RETINAFACE_MEAN,
        "std": RETINAFACE_STD,
        "first_conv": "stem.0.body.0.conv",
        "classifier": "head",
        "license": "mit",  # FaceNAS code (LICENSE); no pretrained weights are shipped
        "description": description,
        "paper_name": "FaceNAS: latency-constrained NAS for RetinaFace backbones (thesis, 2023)",
        "notes": ("mean/std are in RGB order and make timm's transforms give 255 x - (123, 117, 104), RetinaFace's "
                  "input; the whole image is resized (squashed) to input_size, no crop",
                  "checkpoints trained by FaceNAS's train.py take BGR channel order (OpenCV, as RetinaFace): flip "
                  "the channels of a timm pipeline's tensor (x.flip(1)) before feeding them",
                  "trained and searched at 640x640 (thesis 3.7); the detector runs at any size"),
        **kwargs,
    }


#: registry name -> description (the default cfg's and the entrypoint's docstring)
DESCRIPTIONS = {
    "facenas_tt3": "TT3 with eSE, DGX-1 V100 target 5.5 ms [8,640,640] (Table 30)",
    "facenas_tt3_se": "TT3 with SE (Table 32)",
    "facenas_tt3_nose": "TT3_NoSE, final DGX-1 network (Table 34)",
    "facenas_r5": "R5, Raspberry Pi 4 (Table 38)",
    "facenas_r5_v2": "R5_V2: R5 with a KK_Mid pre-stage (Table 39)",
    "facenas_r5_v3": "R5_V3: R5 with a DK pre-stage (Table 39)",
    "facenas_r5_v2_hs": "R5_V2_HS (Table 42)",
    "facenas_r5_v3_hs": "R5_V3_HS (Table 42)",
    "facenas_r11_v2": "R11_V2 (Table 41)",
    "facenas_r11_v3": "R11_V3 (Table 41)",
    "facenas_r11_v2_hs": "R11_V2_HS, final Raspberry Pi 4 network, 235 ms [1,320,320] (Table 44)",
    "facenas_r11_v3_hs": "R11_V3_HS (Table 42)",
    "facenas_r12_v2": "R12_V2 (Table 41)",
    "facenas_r12_v3": "R12_V3 (Table 41)",
    "facenas_r12_v2_hs": "R12_V2_HS (Table 42)",
    "facenas_r12_v3_hs": "R12_V3_HS, fast Raspberry Pi 4 network, 125 ms [1,320,320] (Table 45)",
    "facenas_j1": "J1, Jetson Nano (Table 49)",
    "facenas_j1_hs": "J1_HS (Table 51)",
    "facenas_j15": "J15, Jetson Nano (Table 50)",
    "facenas_j15_hs": "J15_HS, final Jetson Nano network, 37.5 ms [1,640,640] (Table 53)",
    "facenas_mobilenetv1_025": "RetinaFace MobileNetV1-0.25 backbone ('mobile0.25') as a FaceNAS arch",
    "facenas_arch": "any FaceNAS architecture: create_model('facenas_arch', arch='arch.json'); without arch the "
                    "RetinaFace MobileNetV1-0.25 backbone",
}
default_cfgs = generate_default_cfgs({name: _cfg(text) for name, text in DESCRIPTIONS.items()})


# ------------------------------------------------------------------------------------------------ builder
def _checkpoint_filter(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Accept backbone or detector checkpoints (``backbone.`` prefix) and check them against the architecture."""
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    own = model.state_dict()
    # a classifier travels only to a model with the same classifier (save_for_hf of a classification model); the
    # detector and other class counts take the backbone alone
    head_fits = all(k in own and own[k].shape == v.shape for k, v in state_dict.items() if k.startswith("head."))
    # detector checkpoints hold timm's features_only names (stem_0.*, stages_1.*): map them back (stem.0.*, ...)
    state_dict = {k if k in own else k.replace("_", ".", 1): v for k, v in state_dict.items()
                  if head_fits or not k.startswith("head.")}
    check_state_dict(model, state_dict)
    return state_dict


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`FaceNASError` when ``state_dict`` does not fit ``model`` (missing, unexpected, wrong shapes)."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}  # the classifier is optional
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        name = getattr(getattr(model, "arch", None), "name", type(model).__name__)
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {items[0]})")
        raise FaceNASError(f"{source} does not match architecture {name}: {'; '.join(parts)}; "
                           "load it with the architecture it was trained with")


def _create(variant: str, arch: Arch, pretrained: bool = False, **kwargs: Any) -> FaceNASBackbone:
    out_indices = kwargs.pop("out_indices", arch.fpn_indices())
    return build_model_with_cfg(
        FaceNASBackbone,
        variant,
        pretrained,
        arch=arch,
        pretrained_filter_fn=_checkpoint_filter,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _zoo_entrypoint(variant: str, name: str) -> Callable[..., FaceNASBackbone]:
    """The timm entrypoint of one published network (one per :data:`ZOO` entry, registered below)."""

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> FaceNASBackbone:
        return _create(variant, published_arch(name), pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = variant
    entrypoint.__doc__ = f"{DESCRIPTIONS[variant]}."
    return entrypoint


# One @register_model entrypoint per published network, named like ALIASES (facenas_r12_v3_hs, ...), built from the
# ZOO data rather than written out 21 times; each is also a module attribute, as a hand-written one would be.
for _name in ZOO:
    _variant = ALIASES[_name.lower()]
    globals()[_variant] = register_model(_zoo_entrypoint(_variant, _name))


#: What ``facenas_arch`` builds without ``arch=``: the RetinaFace baseline every FaceNAS comparison starts from.
DEFAULT_ARCH = "mobilenetv1_0.25"


@register_model
def facenas_arch(pretrained: bool = False, arch: str | Path | dict | Arch | None = None,
                 **kwargs: Any) -> FaceNASBackbone:
    """Any FaceNAS architecture: ``arch`` is a JSON file path (e.g. a search's ``arch.json``), a dict or an Arch.

    Without ``arch`` it builds the RetinaFace MobileNetV1-0.25 backbone (:data:`DEFAULT_ARCH`, the same network as
    ``facenas_mobilenetv1_025``). timm lists every registered model and builds each with its defaults (its tests,
    ``timm.list_models()`` users, benchmark scripts), so an entrypoint that fails without arguments is a broken model;
    and it cannot be left unregistered, because ``create_model('local-dir:DIR')`` of a saved architecture needs the
    name. The saved config of ``timm.models.save_for_hf`` carries the architecture itself (``model_args.arch``, see
    ``FaceNASBackbone._model_args``), not the path it came from, so the folder loads on any machine.
    """
    if arch is None:
        arch = published_arch(DEFAULT_ARCH)
    elif isinstance(arch, (str, Path)):
        arch = Arch.load(arch)
    elif isinstance(arch, dict):
        arch = Arch.from_dict(arch, "facenas_arch(arch=...)")
    elif not isinstance(arch, Arch):
        raise FaceNASError(f"facenas_arch: arch must be a JSON file path, a dict or an Arch, not {type(arch).__name__}")
    return _create("facenas_arch", arch, pretrained, **kwargs)
