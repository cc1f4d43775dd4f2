"""How good is the latency predictor? Predicted (sum of table entries) vs measured end-to-end backbone latency.

Every network is measured whole, in its deployed form (BatchNorm folded, the table's memory format), on its
``forward_features`` path (first conv .. last conv, exactly the blocks the prediction sums), with the table's protocol,
batch, resolution and threads. Measurements are interleaved: ``--repeats`` rounds, each over all networks in a fresh
random order, and a network's latency is the median of its round means; the spread between rounds is reported, so
machine noise is visible next to predictor error.

Prints per network: predicted raw (plain sum) and calibrated (the table's calibration, latency/calibration.py),
measured, errors; and per group: MAPE, share within 5% and 10%, Spearman rank correlation, bias and the median
spread between rounds. A table from profile_latency.py (or one search.py created) is calibrated already: the report
then checks that calibration on networks of a seed it never saw (``--seed``; the profiler fits on seed 1000 and
validates on 500). ``--fit-calibration`` refits it here on networks drawn with ``--fit-seed`` (never the reported
ones), stores it in the table and reports before and after. For a device the project does not run on (a Raspberry
Pi), ``--from-table`` reports on the whole networks the profiler measured there.

Examples::

    python tools/latency_report.py --latency-table rpi4.json --random 30 --seed 0 --space all \\
        --models R12_V3_HS R11_V2_HS mobilenetv1_0.25 --json report.json
    python tools/latency_report.py --latency-table t.json --arch search_out/arch.json
    python tools/latency_report.py --latency-table rpi4_from_the_pi.json --from-table --fit-calibration
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latency.accuracy import accuracy, spearman, summarize_groups  # noqa: E402
from latency.calibration import CALIBRATION_METHODS, compare_methods, fit_calibration  # noqa: E402
from latency.drift import describe_drift, machine_drift, stored_networks  # noqa: E402
from latency.internal_mode import LatencyTable  # noqa: E402
from latency.measure import load_average  # noqa: E402
from latency.predict import arch_keys, describe_calibration, fit_table_calibration, predict_latency  # noqa: E402
from latency.random_archs import validation_and_fit_archs  # noqa: E402
from latency.runtimes import measure_table_networks  # noqa: E402
from latency.table_format import RunLog  # noqa: E402
from models import published_arch  # noqa: E402
from models.arch import Arch  # noqa: E402
from models.search_space import PRESETS, get_space, preset_spaces  # noqa: E402
from utils.atomic import atomic_write_json  # noqa: E402
from utils.errors import FaceNASError, run_cli  # noqa: E402
from utils.options import NON_NEGATIVE_INT, POSITIVE_INT, SEED, OptionParser, check_output_file  # noqa: E402
from utils.progress import Progress  # noqa: E402


# ------------------------------------------------------------------------------------------------ networks
def collect_networks(args: argparse.Namespace, table: LatencyTable) -> list[dict[str, Any]]:
    """Networks to report, each ``{"arch", "group", "role"}``; role is ``fit`` or ``validate``."""
    nets: list[dict[str, Any]] = []
    for path in args.arch:
        nets.append({"arch": Arch.load(path), "group": "given", "role": "validate"})
    for name in args.models:
        nets.append({"arch": published_arch(name), "group": "registered", "role": "validate"})
    if args.random or args.fit_calibration:
        names = args.space or []
        if not names:
            preset = table.meta.get("preset")
            if preset not in PRESETS:
                raise FaceNASError(f"{table.path} names no preset; pass --space NAME for the random networks")
            names = [PRESETS[preset]["default_experiment"]]
        spaces = []
        for name in names:
            if name.lower() == "all":
                preset = table.meta.get("preset")
                if preset not in PRESETS:
                    raise FaceNASError(f"{table.path} names no preset, so --space all means nothing; name spaces")
                spaces += preset_spaces(preset)
            else:
                spaces.append(get_space(name))
        fit_count = 0 if not args.fit_calibration else (args.fit_random if args.fit_random is not None
                                                          else max(args.random, 10))
        validate, fit = validation_and_fit_archs(spaces, args.random, args.seed, fit_count, args.fit_seed)
        nets += [{"arch": a, "group": "random", "role": "validate"} for a in validate]
        nets += [{"arch": a, "group": "fit", "role": "fit"} for a in fit]
    if not nets:
        raise FaceNASError("no networks: give --arch FILE, --models NAME or --random N")
    names = [n["arch"].name for n in nets]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise FaceNASError(f"network name(s) given twice: {', '.join(sorted(duplicates))}")
    return nets


def networks_from_table(table: LatencyTable) -> list[dict[str, Any]]:
    """Networks the device script measured end to end (``profile_latency.py --random-archs/--fit-archs/--arch``)."""
    if not table.networks:
        raise FaceNASError(f"{table.path} holds no whole networks; measure some on the device with "
                           "profile_latency.py --random-archs 30 --fit-archs 30 --out TABLE")
    nets = []
    for name, record in table.networks.items():
        arch = Arch.from_dict(record["arch"], f"{table.path}: network {name}")
        group = "fit" if record["role"] == "fit" else ("random" if "choices" in arch.meta else "given")
        nets.append({"arch": arch, "group": group, "role": record["role"], "rounds_ms": record["rounds_ms"],
                     "measured_ms": record["measured_ms"], "spread": record["spread"]})
    return nets


def measure_here(nets: list[dict[str, Any]], table: LatencyTable, repeats: int, seed: int,
                 progress: bool = True) -> None:
    """Measure every network end to end here with the table's protocol and store the results in it."""
    with Progress(len(nets) * repeats, "measuring networks", "run", enabled=progress) as bar:
        results = measure_table_networks([net["arch"] for net in nets], table.meta, repeats, seed,
                                         lambda: bar.update(1))
    for net in nets:
        net.update(results[net["arch"].name])


# ------------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    intro, _, rest = __doc__.partition("\n\n")
    parser = OptionParser(prog="tools/latency_report.py", description=intro, epilog=rest)
    parser.add_argument("--latency-table", required=True, metavar="TABLE",
                        help="the latency table (must have been measured on this machine)")
    parser.add_argument("--arch", nargs="+", default=[], metavar="FILE", help="architecture JSON files")
    parser.add_argument("--models", nargs="+", default=[], metavar="NAME",
                        help="published backbones by name, e.g. R12_V3_HS R11_V2_HS mobilenetv1_0.25")
    parser.add_argument("--random", type=NON_NEGATIVE_INT, default=0, metavar="N",
                        help="N random architectures drawn uniformly per edge (Zero included) (default: 0)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random architectures (default: 0)")
    parser.add_argument("--space", action="append", metavar="NAME",
                        help="space(s) to draw from, repeatable, round-robin; _HS suffix allowed; 'all' = every "
                             "experiment of the table's preset and its _HS form (default: the preset's default "
                             "experiment)")
    parser.add_argument("--repeats", type=POSITIVE_INT, default=3,
                        help="interleaved measurement rounds per network; the median is reported (default: 3)")
    parser.add_argument("--fit-calibration", action="store_true",
                        help="refit the table's calibration on separate random networks (--fit-random, --fit-seed), "
                             "store it in the table's metadata and report before/after on the other networks "
                             "(default: off: report on the table's own calibration)")
    parser.add_argument("--fit-random", type=POSITIVE_INT, metavar="N",
                        help="networks to fit on (default: as many as --random, at least 10)")
    parser.add_argument("--fit-seed", type=SEED, default=1000,
                        help="seed of the fitting networks, distinct from --seed (default: 1000)")
    parser.add_argument("--calibration", choices=("select", *CALIBRATION_METHODS), default="select",
                        help="with --fit-calibration: select = the calibration model with the best leave-one-out "
                             "error on the fitting networks, as profile_latency.py does (latency/calibration.py); "
                             "median / lsq / affine = a scale (and offset) from the plain sums only (default: select)")
    parser.add_argument("--drift-check", type=NON_NEGATIVE_INT, default=8, metavar="N",
                        help="also re-measure N of the whole networks stored in the table when it was profiled, in the "
                             "same rounds, and report how much faster or slower the machine runs now (a shared "
                             "machine's speed drifts by tens of percent in an hour); 0 turns it off (default: 8)")
    parser.add_argument("--no-fill", action="store_true",
                        help="fail on blocks missing from the table instead of measuring them here (internal mode, "
                             "the default)")
    parser.add_argument("--from-table", action="store_true",
                        help="report on the whole networks stored in the table by profile_latency.py --random-archs/"
                             "--fit-archs/--arch on the device, instead of measuring here (for a table of another "
                             "device; default: measure here)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON (default: none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.fit_seed == args.seed and args.fit_calibration and not args.from_table:
        raise FaceNASError("--fit-seed must differ from --seed so that the fitting networks are not the reported ones")
    start, load_start = time.time(), load_average()
    table = LatencyTable.load(args.latency_table)
    if table.metric != "latency":
        raise FaceNASError(f"{table.path} is a {table.metric} table; the report compares measured latency")
    if args.from_table:
        if args.arch or args.models or args.random:
            raise FaceNASError("--from-table reports on the networks stored in the table; drop --arch, --models and "
                               "--random (measure more networks on the device instead)")
        nets = networks_from_table(table)
    else:
        table.check_this_machine()
        nets = collect_networks(args, table)

    keys = [key for net in nets for _, key in arch_keys(net["arch"], table.input_size)]
    missing = table.missing(keys)
    if missing:
        if args.no_fill:
            raise FaceNASError(f"{table.path}: {len(missing)} block(s) missing, e.g. {missing[0]}; drop --no-fill to "
                               "measure them here, or run profile_latency.py --names ...")
        print(f"internal mode: measuring {len(missing)} block(s) missing from {table.path}", file=sys.stderr)
        log = RunLog(table.path.with_suffix(".log"))
        try:
            table.measure_missing(missing, progress=not args.quiet, log=log)
        finally:
            log.close()

    stored = [] if args.from_table else stored_networks(table, args.drift_check)
    again = [{"arch": arch} for arch, _, _ in stored]  # measured in the same rounds as the networks checked
    if not args.from_table:
        measure_here(nets + again, table, args.repeats, args.seed, progress=not args.quiet)
    drift = machine_drift(stored, {net["arch"].name: net for net in again})
    for net in nets:
        net["predicted_raw_ms"] = predict_latency(net["arch"], table, calibrated=False)
        net["blocks"] = len(net["arch"].resolve(table.input_size))

    before = table.meta.get("calibration")
    calibration = None
    comparison = None
    if args.fit_calibration:
        fit = [n for n in nets if n["role"] == "fit"]
        validate = [n for n in nets if n["role"] == "validate"]
        if not fit:
            raise FaceNASError(f"{table.path}: no networks with role 'fit' to fit the calibration on; measure some on "
                               "the device with profile_latency.py --fit-archs N")
        extra = {"fit_seed": args.fit_seed, "spaces": sorted({n["arch"].meta.get("space") or "" for n in fit}),
                 "repeats": min(len(n["rounds_ms"]) for n in fit), "source": "tools/latency_report.py"}
        if args.calibration == "select":
            fit_table_calibration(table, [(n["arch"], n["measured_ms"]) for n in fit],
                                  [(n["arch"], n["measured_ms"]) for n in validate])
            table.meta["calibration"].update(extra, n=len(fit), method="select")
        else:
            scale, offset = fit_calibration([n["predicted_raw_ms"] for n in fit], [n["measured_ms"] for n in fit],
                                            args.calibration)
            table.set_calibration(scale, offset, method=args.calibration, n=len(fit), **extra)
        table.save()
        calibration = table.meta["calibration"]
        comparison = compare_methods(fit, validate)
    for net in nets:
        net["predicted_ms"] = predict_latency(net["arch"], table)
        net["error_raw"] = (net["predicted_raw_ms"] / net["measured_ms"] - 1) * 100.0
        net["error_cal"] = (net["predicted_ms"] / net["measured_ms"] - 1) * 100.0

    summary = summarize_groups(nets)
    retest = None
    if all(len(n["rounds_ms"]) >= 2 for n in nets):
        first = [n["rounds_ms"][0] for n in nets]
        second = [n["rounds_ms"][1] for n in nets]
        retest = spearman(first, second)
    print_report(nets, summary, table, calibration, retest)
    if drift is not None:
        corrected = accuracy([n["predicted_ms"] * (1 + drift["drift"]) for n in nets if n["role"] == "validate"],
                             [n["measured_ms"] for n in nets if n["role"] == "validate"])
        drift["validation_corrected"] = corrected
        print(f"machine drift: {drift['n']} networks stored in the table when it was profiled ({drift['when']}) ran "
              f"{describe_drift(drift)} "
              f"against their stored latency, measured in the same rounds as the networks above; with that drift "
              f"taken out, validation MAPE {corrected['mape']:.1f}%, {corrected['within10']:.0f}% within 10% "
              "(the table and the machine disagree by the drift, not the predictor)")
    if comparison:
        print("scale-only calibrations fitted on the same networks, scored on the validation networks:")
        for method, result in comparison.items():
            if "error" in result:
                print(f"  {method:<7} {result['error']}")
                continue
            acc = result["validation"]
            print(f"  {method:<7} scale {result['scale']:.4f} offset {result['offset_ms']:+.3f} ms: MAPE "
                  f"{acc['mape']:.1f}%, within 5% {acc['within5']:.0f}%, within 10% {acc['within10']:.0f}%")
    if args.json:
        report = {
            "table": str(table.path), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": table.meta["device"], "device_name": table.meta["device_name"], "threads": table.meta["threads"],
            "batch": table.batch, "resolution": table.input_size, "protocol": table.meta["protocol"],
            "repeats": min(len(n["rounds_ms"]) for n in nets), "from_table": args.from_table,
            "calibration_before": before, "calibration": table.meta.get("calibration"),
            "refitted": calibration is not None,
            "scale": table.scale, "offset_ms": table.offset_ms, "method_comparison": comparison,
            "retest_spearman": retest, "drift": drift, "seconds": time.time() - start,
            "load_average": [load_start, load_average()],
            "summary": summary,
            "networks": [{k: (v.name if k == "arch" else v) for k, v in n.items()} | {"arch_dict": n["arch"].to_dict()}
                         for n in nets],
        }
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}", file=sys.stderr)


def print_report(nets: list[dict[str, Any]], summary: dict[str, Any], table: LatencyTable,
                 calibration: dict[str, Any] | None, retest: float | None) -> None:
    meta = table.meta
    print(f"table {table.path}: {meta['device']} {meta['device_name']!r}, threads {meta['threads']}, batch "
          f"{table.batch}, {table.input_size}x{table.input_size}, protocol {meta['protocol']['warmup']}/"
          f"{meta['protocol']['samples']}")
    header = f"{'network':<28} {'role':<8} {'blocks':>6} {'pred raw':>9} {'pred cal':>9} {'measured':>9} " \
             f"{'spread%':>7} {'err raw%':>8} {'err cal%':>8}"
    print(header)
    print("-" * len(header))
    for net in sorted(nets, key=lambda n: (n["role"] != "validate", n["group"], n["arch"].name)):
        print(f"{net['arch'].name[:28]:<28} {net['role']:<8} {net['blocks']:>6} {net['predicted_raw_ms']:>9.3f} "
              f"{net['predicted_ms']:>9.3f} {net['measured_ms']:>9.3f} {net['spread']:>7.1f} {net['error_raw']:>+8.1f} "
              f"{net['error_cal']:>+8.1f}")
    print()
    stored = table.meta.get("calibration")
    print(("refitted here and stored in the table: " if calibration else "the table's ") + describe_calibration(stored)
          + (f"; estimator {table.estimator}" if table.estimator else ""))
    print(f"{'group':<16} {'n':>3} {'MAPE raw':>9} {'MAPE cal':>9} {'<=5% raw':>9} {'<=5% cal':>9} {'<=10% raw':>10} "
          f"{'<=10% cal':>10} {'Spearman':>9} {'bias raw':>9} {'spread':>7}")
    for name, s in summary.items():
        raw, cal = s["raw"], s["calibrated"]
        rho = "-" if raw["spearman"] is None else f"{raw['spearman']:.3f}"
        print(f"{name:<16} {raw['n']:>3} {raw['mape']:>8.1f}% {cal['mape']:>8.1f}% {raw['within5']:>8.0f}% "
              f"{cal['within5']:>8.0f}% {raw['within10']:>9.0f}% {cal['within10']:>9.0f}% {rho:>9} "
              f"{raw['bias']:>+8.1f}% {s['median_spread']:>6.1f}%")
    if retest is not None:
        print(f"test-retest Spearman of measured latency (round 1 vs round 2): {retest:.3f}")


if __name__ == "__main__":
    run_cli(main)
