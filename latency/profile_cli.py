"""profile_latency.py: measure the blocks of a FaceNAS search space on a target device (thesis 3.6.2).

The script needs PyTorch only: copy ``profile_latency.py`` alone to a Raspberry Pi, a Jetson or a GPU server and run
it there. It writes a JSON latency table (one entry per block key with its input tensor) and a text log of what it
measured and what it skipped and why. Re-running with the same --out skips the keys already present, so an
interrupted run resumes; the table is rewritten atomically after every entry.

What to measure (combined):
  --preset rpi4            every experiment space of a preset (and its _HS form) at the preset's batch/resolution
  --space R5 --space J15   experiment spaces by name (R5_HS = with HardSwish in stages 3-4)
  --families KK DK ...     an explicit space: families, kernels, expansions, channels per stage, strides...
  --names KEY ... / --names-file FILE   exactly these keys (block names with their _CxHxW input)
Use --list-names to print the keys without measuring.

Is a table still valid here? ``--check TABLE`` re-measures a few of the whole networks the profiler stored in TABLE,
with its protocol and runtime, prints how much faster or slower this device runs them now, and exits with status 1
when that drift exceeds --check-tolerance (the table is stale: re-profile) and 0 when it does not. It writes nothing.
A device's speed moves with its governor, temperature, power mode and other work; on this project's shared VM it
moved by -15% to +160% within hours, and a search against a stale table misses its target by as much.

Calibration, by default: after the blocks, 24 random whole networks of the selected spaces are measured end to end
on the device and the table's calibration (a small linear model of what the plain block sum misses; see
latency/calibration.py) is fitted on them, then scored on 8 others it never saw; both errors are stored in the
table (meta.calibration) and printed. --fit-archs / --random-archs change the counts, --no-calibration skips it.

Examples:
  python profile_latency.py --preset rpi4 --out rpi4.json --rest 30
  python profile_latency.py --preset dgx --out dgx_v100.json
  python profile_latency.py --families KK DK --channels 24,32 64 128 256 --resolution 640 --device cuda --batch 1
  python profile_latency.py --names S_3x3_DKConv_128_64x40x40_HS 3x3_MAXPool_16x160x160 --out extra.json
  python profile_latency.py --preset rpi4 --out rpi4.json --fit-archs 40 --random-archs 30 --arch net.json
  python profile_latency.py --check rpi4.json

In the project this file is latency/profile_cli.py (``python -m latency.profile_cli``); profile_latency.py is
generated from it and the block code by tools/build_profiler.py.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from deploy.registry import PRECISION_CHOICES, RUNTIME_CHOICES
from latency.anchor import ANCHOR_CHOICES, anchor_wanted, corrected, start_anchor
from latency.drift import STORED_PREFIX, describe_drift, machine_drift, stored_networks
from latency.measure import (
    DEFAULT_BATCH,
    DEFAULT_ESTIMATOR,
    block_spec,
    check_device,
    default_threads,
    load_average,
    machine_meta,
    machine_problem,
    usable_cores,
)
from latency.predict import calibrate_from_networks, describe_calibration
from latency.random_archs import validation_and_fit_archs
from latency.runtimes import (
    measure_table_block,
    measure_table_networks,
    runtime_info,
    table_block_timer,
)
from latency.table_format import ESTIMATORS, RunLog, TableFile
from models.arch import Arch
from models.naming import BlockSpec, format_block, parse_block
from models.search_space import (
    EXPERIMENTS,
    PRESETS,
    STAGE_FAMILIES,
    VARIATIONS,
    SearchSpace,
    get_space,
    preset_spaces,
)
from utils.atomic import remove_stale_temporaries
from utils.errors import FaceNASError, run_cli
from utils.options import (
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    OptionParser,
    check_output_file,
    float_range,
    int_range,
)
from utils.progress import Progress

#: Stage blocks whose channel count changes by more than this factor are skipped (--max-channel-ratio). 8 is the
#: largest jump of any thesis search space (TT3 128 -> 1024, T10/T12 32 -> 256), so presets are never cut.
DEFAULT_MAX_CHANNEL_RATIO = 8.0
#: Default numbers of calibration networks: fitting and held-out validation (see --fit-archs for the cost).
DEFAULT_FIT_NETWORKS, DEFAULT_VALIDATION_NETWORKS = 24, 8
#: ``--check``: stored networks re-measured, and the drift (percent) beyond which the table is called stale.
DEFAULT_CHECK_NETWORKS, DEFAULT_CHECK_TOLERANCE = 8, 5.0
#: Seeds of those draws; tools/latency_report.py reports on seed 0 by default, which neither ever sees.
FIT_SEED, VALIDATION_SEED = 1000, 500
#: Measurement order of block families; the rest period falls between two of them.
FAMILY_ORDER = ("Conv", "MaxPool", "MBV1", "MBV2", "BL", "KK", "KK_Mid", "DK")


def build_parser() -> argparse.ArgumentParser:
    """The command line (every option documents its default)."""
    parser = OptionParser(prog="profile_latency.py", description=__doc__.split("\n\n")[0],
                          epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    what = parser.add_argument_group("what to measure")
    what.add_argument("--preset", choices=sorted(PRESETS),
                      help="every experiment space of this preset and their _HS forms, at the preset's batch (rpi4/"
                           "jetson 1, dgx 8), resolution (rpi4 320, others 640) and device (dgx/jetson cuda, rpi4 "
                           "cpu), unless overridden")
    what.add_argument("--space", action="append", default=[], metavar="NAME",
                      help=f"an experiment space ({', '.join(list(EXPERIMENTS)[:4])}, ..., optionally with _HS) or a "
                           "space .json file; repeatable")
    what.add_argument("--names", nargs="+", default=[], metavar="KEY",
                      help="block keys to measure, with their input tensor, e.g. 3x3_KKConv_64_32x80x80")
    what.add_argument("--names-file", metavar="FILE",
                      help="a text file of block keys, one per line (# comments and blank lines ignored)")
    what.add_argument("--list-names", action="store_true",
                      help="print the keys that would be measured (filtered ones as '# skip' comments) and exit")

    space = parser.add_argument_group(
        "explicit space (with --families; the base preset, --preset or rpi4, gives the other defaults)")
    space.add_argument("--families", nargs="+", choices=STAGE_FAMILIES, metavar="FAMILY",
                       help=f"block families of every stage, from {', '.join(STAGE_FAMILIES)} (KK includes KK_Mid)")
    space.add_argument("--kernels", nargs="+", type=POSITIVE_INT, metavar="K",
                       help="kernel sizes of MBV1/MBV2/BL (default: the preset's variations, e.g. 3 5)")
    space.add_argument("--expansions", nargs="+", type=POSITIVE_INT, metavar="R",
                       help="MBV2 expansions (default: the preset's, 3 4 6)")
    space.add_argument("--stages", type=POSITIVE_INT, metavar="N",
                       help="number of stages (default: the number of --channels; extra stages reuse the last "
                            "channels at stride 1)")
    space.add_argument("--channels", nargs="+", metavar="C[,C...]",
                       help="output channels per stage; commas give alternatives that are all measured "
                            "(default: the base preset's default experiment, e.g. 32 64 128 256)")
    space.add_argument("--strides", nargs="+", type=int_range(1, 2), metavar="S",
                       help="stride of each stage, 1 or 2 (default: 1 2 2 2 with MaxPool, 2 2 2 2 without, 1 for "
                            "extra stages)")

    common = parser.add_argument_group("skeleton overrides (apply to --preset, --space and explicit spaces)")
    common.add_argument("--first-channels", nargs="+", type=POSITIVE_INT, metavar="C",
                        help="output channels of the first conv, one or more values (default: 8)")
    common.add_argument("--last-channels", type=POSITIVE_INT, metavar="C",
                        help="output channels of the last 1x1 conv (default: the preset's, 2560 dgx, 256 others)")
    common.add_argument("--pre-stage", metavar="NAME",
                        help="pre-stage block, e.g. 3x3_KKConv_Mid_16 (default: the space's)")
    # two flags rather than BooleanOptionalAction (Python 3.9+): the script also runs on older device images
    common.add_argument("--maxpool", dest="maxpool", action="store_const", const=True, default=None,
                        help="a 3x3 MaxPool after the pre-stage (default: the space's; thesis rpi4/jetson on)")
    common.add_argument("--no-maxpool", dest="maxpool", action="store_const", const=False,
                        help="no MaxPool after the pre-stage")
    common.add_argument("--shortcuts", choices=("none", "strided", "all"),
                        help="stage-first shortcut blocks: none, 1x1_Conv_Pool at stride 2 only, or all (1x1_Conv "
                             "/ 1x1_Conv_Pool) (default: the preset's: rpi4 none, jetson strided, dgx all)")
    common.add_argument("--se", choices=("none", "se", "ese"),
                        help="squeeze-excitation kind (default: the space's; dgx eSE in stages 1-2)")
    common.add_argument("--se-stages", nargs="+", type=NON_NEGATIVE_INT, metavar="I",
                        help="stages with SE, 0 = pre-stage (default: the space's, or all stages when --se is "
                             "given to a space without SE)")
    common.add_argument("--hardswish", choices=("off", "on", "both"), default="off",
                        help="for --families spaces: plain (LeakyReLU), _HS (HardSwish in stages 3-4 and the last "
                             "conv) or both (default: off)")

    how = parser.add_argument_group("how to measure")
    how.add_argument("--device", choices=("cpu", "cuda"),
                     help="where to run the blocks (default: cuda for --preset dgx/jetson, else cpu)")
    how.add_argument("--runtime", choices=RUNTIME_CHOICES, default="torch",
                     help="the runtime the network will be deployed with: torch = eager PyTorch; onnxruntime / "
                          "openvino = every block (and calibration network) exported to its own ONNX graph and run "
                          "there, CPU device, needs pip install onnx plus the runtime; ncnn = every block converted by "
                          "pnnx (fp32 weights) and run by ncnn with light mode and packing layout, fp16 off, needs "
                          "pip install ncnn pnnx (default: torch)")
    how.add_argument("--provider", metavar="NAME",
                     help="onnxruntime execution provider (cpu, cuda, tensorrt, or a full provider name) or openvino "
                          "device (CPU, GPU) (default: cpu / CPU)")
    how.add_argument("--graph-optimization", choices=("disable", "basic", "extended", "all"),
                     help="onnxruntime graph-optimisation level (default: all)")
    how.add_argument("--precision", choices=PRECISION_CHOICES, default="float32",
                     help="float32, or int8: every graph quantized after training (static QDQ, int8 per-channel "
                          "weights, uint8 activations, ranges calibrated on random inputs: latency does not depend "
                          "on the values) before it is timed; --runtime onnxruntime only. A table holds one "
                          "precision (default: float32)")
    how.add_argument("--batch", type=POSITIVE_INT,
                     help="batch size of the input tensor (default: the preset's; else 8 on cuda, 1 on cpu)")
    how.add_argument("--resolution", type=int_range(32),
                     help="network input side in pixels (default: the preset's, else 640; none for --names only)")
    how.add_argument("--threads", type=POSITIVE_INT,
                     help=f"CPU threads, fixed for the run and recorded (default on a CPU: every usable core but "
                          f"one, here {default_threads('cpu')}, so other work does not stall the timing; pass the "
                          "thread count you will deploy with, e.g. 4 on a dedicated Raspberry Pi 4)")
    how.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                     help="tensor and weight type (default: float32)")
    how.add_argument("--channels-last", action="store_true",
                     help="measure in channels_last memory format (default: contiguous NCHW)")
    how.add_argument("--warmup", type=NON_NEGATIVE_INT, help="untimed calls per block (default: 40 cuda, 20 cpu)")
    how.add_argument("--samples", type=POSITIVE_INT, help="timed calls per block (default: 200 cuda, 50 cpu)")
    how.add_argument("--estimator", choices=tuple(ESTIMATORS),
                     help="statistic of each block's timed samples the table's values use; every entry keeps all "
                          "of them, this picks one; decided when the table is created (default: "
                          f"{DEFAULT_ESTIMATOR}: interference from other work only ever adds time, and the minimum "
                          "had the best test-retest agreement of whole networks on two shared machines; "
                          "docs/LATENCY.md)")
    how.add_argument("--rounds", type=POSITIVE_INT, default=1,
                     help="measure the whole list R times in separate passes and keep, per block, the round with "
                          "the median mean (robust to a busy or throttling spell); resuming with a larger R adds "
                          "rounds to existing entries (default: 1, the thesis protocol)")
    how.add_argument("--anchor", choices=ANCHOR_CHOICES, default="auto",
                     help="re-time one mid-sized reference block before every block and divide the device's speed "
                          "drift during the pass out of the table (each entry records its drift_factor; about one "
                          "extra block timing per block): auto = on for onnxruntime / openvino / ncnn, whose passes "
                          "take minutes, off for torch; use on for slow or throttling devices; decided when the table "
                          "is created and kept on resume (default: auto)")
    how.add_argument("--rest", type=NON_NEGATIVE_FLOAT, default=0.0, metavar="SECONDS",
                     help="pause between block families to let the device cool (default: 0; 30-60 s on a "
                          "Raspberry Pi without a fan)")

    filters = parser.add_argument_group("filters (skipped blocks are logged with the reason)")
    filters.add_argument("--max-ms", type=POSITIVE_FLOAT, metavar="MS",
                         help="skip a block when the mean of its first 5 samples after warm-up exceeds MS "
                              "(default: no threshold)")
    filters.add_argument("--max-channel-ratio", type=float_range(1, also=(0,)), default=DEFAULT_MAX_CHANNEL_RATIO,
                         metavar="R",
                         help="skip stage blocks whose output/input channel ratio (either way) exceeds R, e.g. "
                              "16 -> 128 at R=4; first/last convs and MaxPool are exempt; 0 disables "
                              f"(default: {DEFAULT_MAX_CHANNEL_RATIO:g}, the largest jump in the thesis spaces)")

    nets = parser.add_argument_group(
        "calibration: whole networks measured end to end after the blocks (stored under 'networks' in the table) "
        "and the table's calibration fitted on them; on by default")
    nets.add_argument("--fit-archs", type=NON_NEGATIVE_INT, default=None, metavar="N",
                      help="random networks of the selected spaces to fit the calibration on: a block table alone "
                           "under-predicts whole networks (warm caches, no neighbours), the fit corrects that. Cost: "
                           "--repeats x (warm-up + samples) calls per network, 1-3 s per network and round for the "
                           "rpi4 preset on a 2-core x86 at its default 1 thread (the whole rpi4 profile: 2-5 minutes "
                           "there) "
                           f"and several times that on a Raspberry Pi (default: {DEFAULT_FIT_NETWORKS} when spaces "
                           "are selected, 0 for --names only)")
    nets.add_argument("--random-archs", type=NON_NEGATIVE_INT, default=None, metavar="N",
                      help="other random networks, never fitted on, that measure the calibration's error (stored in "
                           f"meta.calibration.validation) (default: {DEFAULT_VALIDATION_NETWORKS} when spaces are "
                           "selected, 0 for --names only)")
    nets.add_argument("--no-calibration", action="store_true",
                      help="measure no random networks and fit no calibration: the table then predicts plain sums "
                           "of its blocks and search.py warns about it (default: calibrate)")
    nets.add_argument("--arch", nargs="+", default=[], metavar="FILE",
                      help="architecture JSON files, measured end to end for later reports (their blocks are "
                           "measured too; never fitted on)")
    nets.add_argument("--seed", type=SEED, default=VALIDATION_SEED,
                      help=f"seed of --random-archs (default: {VALIDATION_SEED})")
    nets.add_argument("--fit-seed", type=SEED, default=FIT_SEED, help=f"seed of --fit-archs (default: {FIT_SEED})")
    nets.add_argument("--repeats", type=POSITIVE_INT, default=3,
                      help="interleaved rounds per network; the median is kept (default: 3)")

    check = parser.add_argument_group("checking an existing table (instead of measuring blocks)")
    check.add_argument("--check", metavar="TABLE",
                       help="re-measure whole networks stored in TABLE on this device (its protocol, runtime and "
                            "threads; --repeats rounds) and report the drift since profiling; exit 1 when it exceeds "
                            "--check-tolerance, 0 otherwise; writes nothing (default: off)")
    check.add_argument("--check-networks", type=POSITIVE_INT, default=DEFAULT_CHECK_NETWORKS, metavar="N",
                       help=f"stored networks to re-measure, fitting ones first; about 2 s each and round for the "
                            f"rpi4 preset on a 2-core x86 (default: {DEFAULT_CHECK_NETWORKS})")
    check.add_argument("--check-tolerance", type=POSITIVE_FLOAT, default=DEFAULT_CHECK_TOLERANCE, metavar="PCT",
                       help="largest median drift, in percent either way, that still counts as the same device "
                            f"state (default: {DEFAULT_CHECK_TOLERANCE:g})")

    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="FILE",
                     help="the JSON table; resumed when it exists (default: latency_<preset|custom>_<device>_"
                          "b<batch>_<resolution>.json in the current folder)")
    out.add_argument("--log", metavar="FILE", help="text log, appended (default: --out with the suffix .log)")
    out.add_argument("--note", default="", help="free text stored in the metadata, e.g. 'nvpmodel MAXN, fan on'")
    out.add_argument("--quiet", action="store_true", help="no progress display")
    return parser


# ------------------------------------------------------------------------------------------------ key sets
def _split_channels(values: list[str]) -> list[list[int]]:
    try:
        stages = [[int(c) for c in value.split(",") if c] for value in values]
    except ValueError:
        raise FaceNASError(f"--channels takes integers per stage, commas for alternatives, not {values}") from None
    if any(not stage or min(stage) < 1 for stage in stages):
        raise FaceNASError(f"--channels takes positive integers per stage, commas for alternatives, not {values}")
    return stages


def explicit_spaces(args: argparse.Namespace) -> list[SearchSpace]:
    """Spaces of an explicit option set (--families ...): one per combination of channel alternatives."""
    base = args.preset or "rpi4"
    experiment = EXPERIMENTS[PRESETS[base]["default_experiment"]]
    channel_options = (_split_channels(args.channels) if args.channels
                       else [[stage["channels"]] for stage in experiment["stages"]])
    n_stages = args.stages or len(channel_options)
    channel_options = (channel_options + [channel_options[-1]] * n_stages)[:n_stages]
    maxpool = experiment["maxpool"] if args.maxpool is None else args.maxpool
    strides = args.strides or [1 if (maxpool and i == 0) else 2 for i in range(min(4, n_stages))]
    strides = (list(strides) + [1] * n_stages)[:n_stages]
    variations: dict[str, dict[str, list[int]]] = {}
    for family in ("MBV1", "MBV2", "BL"):
        preset_var = {k: list(v) for k, v in VARIATIONS[base].get(family, {}).items()}
        if args.kernels:
            preset_var["kernels"] = list(args.kernels)
        if family == "MBV2" and args.expansions:
            preset_var["expansions"] = list(args.expansions)
        variations[family] = preset_var
    spaces = []
    hs_modes = {"off": [False], "on": [True], "both": [False, True]}[args.hardswish]
    for combo in itertools.product(*channel_options):
        stages = [{"families": list(args.families), "max_blocks": 2, "channels": c, "stride": s}
                  for c, s in zip(combo, strides)]
        data = {"name": "custom_" + "_".join(map(str, combo)), "preset": base, "stages": stages, "maxpool": maxpool,
                "pre_stage": experiment["pre_stage"], "variations": variations}
        space = SearchSpace.from_dict(data, "the --families options")
        for hs in hs_modes:
            spaces.append(space.with_hardswish() if hs else space)
    return spaces


def apply_overrides(spaces: list[SearchSpace], args: argparse.Namespace) -> list[SearchSpace]:
    """Skeleton overrides (first/last channels, pre-stage, MaxPool, shortcuts, SE) applied to every space."""
    overrides: dict[str, Any] = {}
    if args.last_channels is not None:
        overrides["last_channels"] = args.last_channels
    if args.pre_stage:
        overrides["pre_stage"] = args.pre_stage
    if args.maxpool is not None:
        overrides["maxpool"] = args.maxpool
    if args.shortcuts:
        overrides["shortcut_policy"] = args.shortcuts
    firsts = args.first_channels or [None]
    if not overrides and firsts == [None] and args.se is None and args.se_stages is None:
        return spaces
    out = []
    for space, first in itertools.product(spaces, firsts):
        data = {**space.to_dict(), **overrides}
        if first is not None:
            data["first_channels"] = first
        if args.se is not None:
            data["se"] = None if args.se == "none" else args.se
            if args.se != "none" and args.se_stages is None and not data["se_stages"]:
                data["se_stages"] = list(range(len(space.stages) + 1))
        if args.se_stages is not None:
            data["se_stages"] = list(args.se_stages)
        if "maxpool" in overrides and args.strides is None:
            # a MaxPool toggle moves the first stride-2 step (stride 32 needs it either way)
            for i, stage in enumerate(data["stages"]):
                if i == 0:
                    stage["stride"] = 1 if overrides["maxpool"] else 2
        out.append(SearchSpace.from_dict(data, f"space {space.name} with the command-line overrides"))
    return out


def read_names_file(path: str) -> list[str]:
    """Keys of a names file (one per line; ``#`` comments and blank lines ignored); errors name file:line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FaceNASError(f"{path}: cannot read the names file ({exc.strerror})") from None
    keys = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            keys.append(format_block(block_spec(text)))
        except FaceNASError as exc:
            raise FaceNASError(f"{path}:{number}: {exc}") from None
    return keys


def collect(args: argparse.Namespace) -> tuple[list[str], list[SearchSpace], int | None]:
    """Keys to measure (canonical, deduplicated; whole networks' blocks included), the spaces, the resolution."""
    spaces: list[SearchSpace] = []
    if args.preset and not args.families:
        spaces += preset_spaces(args.preset)
    spaces += [get_space(name) for name in args.space]
    if args.families:
        spaces += explicit_spaces(args)
    elif any(v is not None for v in (args.kernels, args.expansions, args.stages, args.channels, args.strides)):
        raise FaceNASError("--kernels, --expansions, --stages, --channels and --strides describe an explicit space: "
                           "add --families")
    spaces = apply_overrides(spaces, args)
    resolution = args.resolution
    if resolution is None and (args.preset or spaces):
        resolution = PRESETS[args.preset]["latency_size"] if args.preset else 640
    keys: list[str] = []
    for space in spaces:
        keys += space.latency_keys(resolution)
    for name in args.names:
        keys.append(format_block(block_spec(name)))
    if args.names_file:
        keys += read_names_file(args.names_file)
    if args.arch and resolution is None:
        raise FaceNASError("--arch needs --resolution (or a --preset) to place the network's blocks")
    for path in args.arch:
        keys += [block.key for block in Arch.load(path).resolve(resolution)]
    if not keys:
        raise FaceNASError("nothing to measure: give --preset, --space, --families or --names (see --help)")
    return list(dict.fromkeys(keys)), spaces, resolution


def collect_networks(args: argparse.Namespace, spaces: list[SearchSpace]) -> list[tuple[Arch, str]]:
    """Whole networks to measure: (architecture, role) for --arch, --random-archs and --fit-archs."""
    nets = [(Arch.load(path), "validate") for path in args.arch]
    if args.no_calibration:
        args.random_archs = args.fit_archs = 0
    for name, default in (("fit_archs", DEFAULT_FIT_NETWORKS), ("random_archs", DEFAULT_VALIDATION_NETWORKS)):
        if getattr(args, name) is None:
            setattr(args, name, default if spaces else 0)
    if (args.random_archs or args.fit_archs) and not spaces:
        raise FaceNASError("--random-archs/--fit-archs draw from the selected spaces: add --preset, --space or "
                           "--families")
    if args.random_archs and args.fit_archs and args.seed == args.fit_seed:
        raise FaceNASError("--fit-seed must differ from --seed (fitting and validation networks must differ)")
    validate, fit = validation_and_fit_archs(spaces, args.random_archs, args.seed, args.fit_archs, args.fit_seed)
    nets += [(arch, "validate") for arch in validate] + [(arch, "fit") for arch in fit]
    names = [arch.name for arch, _ in nets]
    if len(set(names)) != len(names):
        raise FaceNASError("two networks share a name; give the architecture files distinct 'name' fields")
    return nets


def family_groups(keys: list[str]) -> list[tuple[str, list[str]]]:
    """Keys grouped by block family (measurement order), inputs large to small inside a group."""
    groups: dict[str, list[tuple[tuple, str]]] = {}
    for key in keys:
        spec = parse_block(key)
        order = (spec.kernel, spec.expansion or 0, spec.se or "", spec.act, spec.shortcut, spec.stride,
                 -(spec.size[0] * spec.size[1]), spec.cin, spec.cout)
        groups.setdefault(spec.family, []).append((order, key))
    ranked = sorted(groups, key=lambda f: FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER))
    return [(family, [key for _, key in sorted(groups[family])]) for family in ranked]


def channel_ratio_problem(spec: BlockSpec, max_ratio: float) -> str | None:
    """Why a stage block is an atypical channel jump, or ``None`` (first/last convs and MaxPool are exempt)."""
    if not max_ratio or spec.family in ("Conv", "MaxPool", "Zero") or not spec.cin:
        return None
    ratio = max(spec.cout, spec.cin) / min(spec.cout, spec.cin)
    if ratio > max_ratio:
        return f"atypical channel jump {spec.cin} -> {spec.cout} (ratio {ratio:g} > --max-channel-ratio {max_ratio:g})"
    return None


# -------------------------------------------------------------------------------------------- progress/log
# -------------------------------------------------------------------------------------------------- main
def default_out(args: argparse.Namespace, device: str, batch: int, resolution: int | None) -> str:
    label = args.preset or ("custom" if (args.families or args.space) else "names")
    runtime = "" if args.runtime == "torch" else f"_{args.runtime}"
    precision = "" if args.precision == "float32" else f"_{args.precision}"
    return f"latency_{label}_{device}{runtime}{precision}_b{batch}_{resolution or 'any'}.json"


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, then measure (or list) the selected blocks into the table."""
    args = build_parser().parse_args(argv)
    if args.check:
        sys.exit(check_table(args))
    keys, spaces, resolution = collect(args)
    space_names = list(dict.fromkeys(s.name for s in spaces))
    if len(space_names) > 30:  # channel alternatives multiply spaces: keep the metadata and messages short
        space_names = space_names[:10] + [f"... {len(space_names)} spaces in all"]
    networks = collect_networks(args, spaces)
    filtered = {}
    for key in keys:
        problem = channel_ratio_problem(parse_block(key), args.max_channel_ratio)
        if problem:
            filtered[key] = problem
    if args.list_names:
        for _, group in family_groups(keys):
            for key in group:
                print(f"# skip {key}: {filtered[key]}" if key in filtered else key)
        for arch, role in networks:
            print(f"# network {arch.name} ({role}): {len(arch.resolve(resolution))} blocks")
        print(f"{len(keys) - len(filtered)} keys to measure, {len(filtered)} filtered, from "
              f"{', '.join(space_names) or 'the given names'} at resolution {resolution}; {len(networks)} whole "
              "networks", file=sys.stderr)
        return

    device = args.device or ("cuda" if args.preset and PRESETS[args.preset]["gpu"] else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        hint = f" (--preset {args.preset} profiles a GPU; pass --device cpu to profile this CPU)" if args.preset else ""
        raise FaceNASError(f"CUDA is not available on this machine{hint}")
    check_device(device)
    batch = args.batch if args.batch is not None else (PRESETS[args.preset]["latency_batch"] if args.preset
                                                       else DEFAULT_BATCH[device])
    threads = args.threads if args.threads is not None else default_threads(device)
    out = check_output_file(args.out or default_out(args, device, batch, resolution), "--out")
    log_path = check_output_file(args.log, "--log") if args.log else out.with_suffix(".log")
    remove_stale_temporaries(out.parent, [out.name])  # of a run killed inside a table write
    if args.runtime == "torch" and (args.provider or args.graph_optimization):
        raise FaceNASError("--provider and --graph-optimization belong to --runtime onnxruntime / openvino / ncnn")
    runtime = runtime_info(args.runtime, args.provider, args.graph_optimization, threads,
                           precision=args.precision)
    meta = machine_meta(device, batch, resolution, threads, args.warmup, args.samples, args.dtype, args.channels_last,
                        estimator=args.estimator or DEFAULT_ESTIMATOR, preset=args.preset, spaces=space_names,
                        source="profile_latency.py", notes=args.note,
                        **{k: v for k, v in runtime.items() if k != "threads"})
    resumed = out.exists()
    table = TableFile.open_or_create(out, **meta)
    protocol = table.meta["protocol"]
    protocol["rounds"] = max(int(protocol.get("rounds", 1)), args.rounds)
    for name, stored in (("warmup", protocol["warmup"]), ("samples", protocol["samples"]),
                         ("estimator", table.estimator)):
        asked = getattr(args, name)
        if asked is not None and asked != stored:
            raise FaceNASError(f"{out}: table was measured with {name}={stored} but --{name} {asked} was "
                               "given; drop the option to resume it, or write to another --out")
    args.anchored = anchor_wanted(table.meta, len(table) > 0, args.anchor)
    if resumed and table.meta.get("torch_version") != torch.__version__:
        print(f"warning: {out} was measured with torch {table.meta.get('torch_version')}, this is "
              f"{torch.__version__}", file=sys.stderr)
    busy = _busy_warning(table.meta["device"], threads)
    if busy:
        print(f"warning: {busy}", file=sys.stderr)
    log = RunLog(log_path)
    if busy:
        log(f"warning: {busy}")
    log(f"run: {' '.join(shlex.quote(a) for a in (sys.argv if argv is None else ['profile_latency.py', *argv]))}")
    log(f"table {out} ({'resumed, ' + str(len(table)) + ' entries' if resumed else 'new'}); device "
        f"{table.meta['device']} {table.meta['device_name']!r}, batch {batch}, resolution {resolution}, threads "
        f"{threads}, protocol warm-up {protocol['warmup']} / samples {protocol['samples']}; {len(keys)} keys")
    try:
        counts = profile(table, keys, filtered, args, log)
        if networks:
            counts["networks"] = profile_networks(table, networks, args, log)
        summary = calibrate(table, log) if not args.no_calibration else "no calibration (--no-calibration)"
    finally:
        log.close()
    print(f"{out}: measured {counts['measured']}, already present {counts['present']}, skipped {counts['skipped']} "
          f"(see {log.path}); {len(table)} entries, {counts['seconds']:.0f} s"
          + (f"; {counts['networks']} networks measured end to end" if networks else "") + f"; {summary}",
          file=sys.stderr)


def check_table(args: argparse.Namespace) -> int:
    """``--check``: how far this device now runs from the table's stored networks; 1 when stale, else 0."""
    path = Path(args.check)
    if not path.is_file():
        raise FaceNASError(f"{path}: no such table (--check)")
    table = TableFile.load(path)
    stored = stored_networks(table, args.check_networks)
    if not stored:
        raise FaceNASError(f"{path}: the table stores no whole networks to check against (it was profiled with "
                           "--no-calibration or by an older version); profile it again with the default options")
    device = table.meta.get("device", "cpu")
    check_device(device)
    problem = machine_problem(table.meta)
    if problem:
        print(f"warning: {path}: {problem}: a drift check compares a device with itself", file=sys.stderr)
    busy = _busy_warning(device, int(table.meta.get("threads") or 1))
    if busy:
        print(f"warning: {busy}", file=sys.stderr)
    with Progress(len(stored) * args.repeats, "networks", "run", enabled=not args.quiet) as progress:
        results = measure_table_networks([arch for arch, _, _ in stored], table.meta, args.repeats, args.seed,
                                         lambda: progress.update(1))
    for arch, stored_ms, _ in stored:
        now = results[arch.name]["measured_ms"]
        print(f"{arch.name[len(STORED_PREFIX):]:32s} stored {stored_ms:9.3f} ms  now {now:9.3f} ms  "
              f"{100 * (now / stored_ms - 1):+6.1f}%  (spread {results[arch.name]['spread']:.1f}%)")
    drift = machine_drift(stored, results)
    text = (f"{path}: {drift['n']} stored networks (profiled {drift['when']}) run {describe_drift(drift)} against "
            "the table now")
    if abs(100 * drift["drift"]) > args.check_tolerance:
        print(f"{text}: STALE (beyond {args.check_tolerance:g}%). Predictions from this table are off by about as "
              "much; put the device back in the state it was profiled in (governor, power mode, no other work) "
              "or profile it again to a new --out", file=sys.stderr)
        return 1
    print(f"{text}: within {args.check_tolerance:g}%, the table still describes this device", file=sys.stderr)
    return 0


def calibrate(table: TableFile, log: RunLog) -> str:
    """Fit the table's calibration on its measured 'fit' networks (scored on the 'validate' ones) and save it."""
    if calibrate_from_networks(table) is None:
        return "no calibration (fewer than 3 fitting networks measured)"
    table.save()
    text = describe_calibration(table.meta["calibration"])
    log(text)
    return text


def _busy_warning(device: str, threads: int) -> str | None:
    """A warning when other work already loads the CPU (the timings would be inflated and noisy)."""
    load, cores = load_average(), usable_cores()
    if device != "cpu" or load is None or load + threads <= cores + 0.5:
        return None
    return (f"the machine is busy (load average {load:g} on {cores} cores, {threads} thread(s) wanted): block "
            "timings will be inflated; stop other work or profile later")


def profile(table: TableFile, keys: list[str], filtered: dict[str, str], args: argparse.Namespace,
            log: RunLog) -> dict[str, Any]:
    """Measure the keys family by family into ``table``, saving after every change; returns counts.

    With ``--rounds R`` the whole key list is measured R times in separate passes (so a slow spell of the machine
    hits one pass, not one block); an entry keeps every round and shows the round with the median mean.
    """
    meta = table.meta
    counts = {"measured": 0, "present": 0, "skipped": 0}
    start = time.time()
    groups = family_groups(keys)
    todo = [key for key in keys if key not in filtered and table.rounds_of(key) < args.rounds]
    anchor = start_anchor(meta, todo, getattr(args, "anchored", False), table_block_timer)
    if anchor is not None:
        table.save()
        log(f"drift anchor {anchor.key}: reference {anchor.reference_ms:.4f} ms; every block is re-scaled to it")
    progress = Progress(len(keys) * args.rounds, unit="block", enabled=not args.quiet)
    try:
        for round_index in range(args.rounds):
            for index, (family, group) in enumerate(groups):
                measured_here = 0
                for key in group:
                    done = table.rounds_of(key)
                    if done > round_index:
                        if round_index == 0 and done >= args.rounds:
                            counts["present"] += 1
                            log(f"present {key} (already in the table)")
                        progress.update(text=f"{key} present")
                        continue
                    reason = None if done else _skip_reason(table, key, filtered, args)
                    if reason is None:
                        try:
                            factor = anchor.factor() if anchor is not None else None
                            stats = measure_table_block(key, meta, None if done else args.max_ms)
                        except RuntimeError as exc:  # e.g. out of memory on a small device: log it, go on
                            reason = f"error while measuring: {str(exc).splitlines()[0][:200]}"
                            table.skip(key, reason, filter="error")
                        else:
                            measured_here += 1
                            if stats["aborted"]:
                                reason = (f"mean of first 5 samples {stats['first5_ms']:.3f} ms > --max-ms "
                                          f"{args.max_ms:g}")
                                table.skip(key, reason, filter="max_ms", first5_ms=round(stats["first5_ms"], 6))
                    if reason is not None:
                        counts["skipped"] += 1
                        table.save()
                        log(f"skipped {key}: {reason}")
                        progress.update(text=f"{key} skipped")
                        continue
                    if factor is not None:
                        stats = corrected(stats, factor)
                    table.add_round(key, stats)
                    table.save()
                    counts["measured"] += 1
                    log(f"measured {key} mean={stats['mean_ms']:.4f} ms median={stats['median_ms']:.4f} "
                        f"p10={stats['p10_ms']:.4f} p90={stats['p90_ms']:.4f} n={stats['n']} "
                        f"first5={stats['first5_ms']:.4f} round={round_index + 1} load={load_average()}"
                        + (f" drift_factor={factor:.4f}" if factor is not None else ""))
                    progress.update(text=f"{key} {stats['mean_ms']:.3f} ms")
                last = round_index == args.rounds - 1 and index == len(groups) - 1
                if args.rest > 0 and measured_here and not last:
                    log(f"rest {args.rest:g} s after the {family} blocks")
                    time.sleep(args.rest)
    finally:
        progress.close()
        counts["seconds"] = time.time() - start
        log(f"done: measured {counts['measured']}, present {counts['present']}, skipped {counts['skipped']} in "
            f"{counts['seconds']:.1f} s")
    return counts


def _skip_reason(table: TableFile, key: str, filtered: dict[str, str], args: argparse.Namespace) -> str | None:
    """Why a key that has no entry yet is not measured (and record it in the table), or ``None``."""
    if key in filtered:
        table.skip(key, filtered[key], filter="channel_ratio")
        return filtered[key]
    earlier = table.skipped.get(key, {})
    if args.max_ms is not None and earlier.get("filter") == "max_ms" and earlier.get("first5_ms", 0) > args.max_ms:
        reason = (f"mean of first 5 samples {earlier['first5_ms']:.3f} ms > --max-ms {args.max_ms:g} (measured in an "
                  "earlier run)")
        table.skip(key, reason, filter="max_ms", first5_ms=earlier["first5_ms"])
        return reason
    return None


def profile_networks(table: TableFile, networks: list[tuple[Arch, str]], args: argparse.Namespace,
                     log: RunLog) -> int:
    """Measure whole networks end to end (interleaved rounds) into ``table.networks``; returns how many."""
    todo = []
    for arch, role in networks:
        known = table.networks.get(arch.name)
        if known is None:
            todo.append((arch, role))
        elif known["arch"] != arch.to_dict():
            raise FaceNASError(f"{table.path}: network {arch.name!r} is stored with another architecture; rename it "
                               "or write to another --out")
        else:
            log(f"present network {arch.name}")
    if not todo:
        return 0
    with Progress(len(todo) * args.repeats, "networks", "run", enabled=not args.quiet) as progress:
        results = measure_table_networks([arch for arch, _ in todo], table.meta, args.repeats, args.seed,
                                   lambda: progress.update(1))
    for arch, role in todo:
        stats = results[arch.name]
        table.add_network(arch.name, arch.to_dict(), stats, role)
        log(f"network {arch.name} ({role}) measured={stats['measured_ms']:.4f} ms rounds={stats['rounds_ms']} "
            f"spread={stats['spread']:.1f}%")
    table.save()
    return len(todo)


if __name__ == "__main__":
    run_cli(main)
