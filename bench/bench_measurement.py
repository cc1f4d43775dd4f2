"""Which timing statistic survives a shared machine? A test-retest study of blocks and whole networks (not a test).

Issue 10 asks for the estimator to be chosen by measured test-retest agreement. This benchmark measures, in ``R``
rounds, every block of a preset and ``K`` random whole networks of its spaces, with the table protocol (warm-up,
samples, threads), keeping every timed sample. Within a round the blocks and the networks are interleaved (a
shuffled list of both), so slow drifts of the machine hit both alike. From the same samples it then scores each
candidate statistic of a call's samples (trimmed mean, median, 10th percentile, minimum):

* **test-retest**: the median relative difference between two rounds of the same block / network, and the Spearman
  rank correlation of the networks between rounds;
* **agreement**: how much the ratio (network time) / (sum of its blocks' times) moves between rounds (its median
  relative range over networks): a table is only as good as this ratio is stable;
* **prediction**: a calibration chosen and fitted (``latency.calibration.select_model``) on half of the networks
  with rounds 1..R/2, scored on the other half with the other rounds (independent measurements): MAPE and the share
  within 10%.

``--busy`` starts a process that keeps one core busy for the whole run (the "one core busy" condition). Results go
to a JSON file and a markdown table on stdout.

    python bench/bench_measurement.py --rounds 4 --networks 24 --json bench/results/measurement_quiet.json
    python bench/bench_measurement.py --rounds 4 --networks 24 --busy --json bench/results/measurement_busy.json
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from latency.accuracy import accuracy, spearman  # noqa: E402
from latency.calibration import network_features, select_model  # noqa: E402
from latency.measure import (  # noqa: E402
    _quantile,
    block_input_shape,
    cpu_model,
    deploy_backbone,
    deploy_block,
    load_average,
    measure_module,
)
from latency.random_archs import random_archs  # noqa: E402
from models.naming import parse_block  # noqa: E402
from models.search_space import PRESETS, preset_spaces  # noqa: E402
from utils.atomic import atomic_write_json  # noqa: E402
from utils.progress import Progress  # noqa: E402

STATISTICS = {
    "trimmed_mean": lambda s: statistics.fmean(sorted(s)[len(s) // 10: len(s) - len(s) // 10]),
    "median": lambda s: _quantile(sorted(s), 0.5),
    "p10": lambda s: _quantile(sorted(s), 0.1),
    "min": min,
}


def _burn() -> None:  # pragma: no cover - runs in a child process
    while True:
        pass


def measure_all(keys: list[str], archs: list, args: argparse.Namespace) -> tuple[dict, dict, list[float]]:
    """Every block and network, ``args.rounds`` times, interleaved; returns raw samples per round and the loads."""
    side = PRESETS[args.preset]["latency_size"]
    items = [("block", k) for k in keys] + [("net", a.name) for a in archs]
    modules = {("block", k): (deploy_block(k), block_input_shape(k, 1)) for k in keys}
    modules.update({("net", a.name): (deploy_backbone(a), (1, 3, side, side)) for a in archs})
    samples: dict[tuple[str, str], list[list[float]]] = {item: [] for item in items}
    loads: list[float] = []
    rng = random.Random(args.seed)
    with Progress(len(items) * args.rounds, "measuring", "call") as bar:
        for _ in range(args.rounds):
            order = list(items)
            rng.shuffle(order)
            for item in order:
                module, shape = modules[item]
                stats = measure_module(module, shape, "cpu", args.warmup, args.samples, args.threads,
                                       keep_samples=True)
                samples[item].append(stats["samples_ms"])
                if stats["load"] is not None:
                    loads.append(stats["load"])
                bar.update(1)
    blocks = {k: samples[("block", k)] for k in keys}
    nets = {a.name: samples[("net", a.name)] for a in archs}
    return blocks, nets, loads


def _rel_diff(a: float, b: float) -> float:
    return abs(a - b) / ((a + b) / 2) * 100.0


def score(name: str, blocks: dict, nets: dict, archs: list, rounds: int, side: int) -> dict[str, Any]:
    """Test-retest, agreement and prediction figures of one statistic."""
    stat = STATISTICS[name]
    block_values = {k: [stat(s) for s in rs] for k, rs in blocks.items()}
    net_values = {n: [stat(s) for s in rs] for n, rs in nets.items()}
    pairs = [(r, r + 1) for r in range(rounds - 1)]
    block_retest = statistics.median(_rel_diff(v[a], v[b]) for v in block_values.values() for a, b in pairs)
    net_retest = statistics.median(_rel_diff(v[a], v[b]) for v in net_values.values() for a, b in pairs)
    rhos = [spearman([v[a] for v in net_values.values()], [v[b] for v in net_values.values()]) for a, b in pairs]

    def block_sum(arch, which: list[int]) -> float:
        return sum(statistics.median(block_values[b.key][r] for r in which) for b in arch.resolve(side))

    ratios = []
    for arch in archs:
        per_round = [net_values[arch.name][r] / block_sum(arch, [r]) for r in range(rounds)]
        ratios.append((max(per_round) - min(per_round)) / statistics.median(per_round) * 100.0)
    first, second = list(range(rounds // 2)), list(range(rounds // 2, rounds))

    def features(arch, which: list[int]) -> dict[str, float]:
        return network_features([(b.spec, statistics.median(block_values[b.key][r] for r in which))
                                 for b in arch.resolve(side)], 1)

    fit, held = archs[0::2], archs[1::2]
    measured_fit = [statistics.median(net_values[a.name][r] for r in first) for a in fit]
    calibration, _ = select_model([features(a, first) for a in fit], measured_fit)
    predicted = [sum(c * features(a, second).get(f, 0.0) for f, c in calibration.coef.items()) for a in held]
    measured_held = [statistics.median(net_values[a.name][r] for r in second) for a in held]
    return {"block_retest_pct": block_retest, "network_retest_pct": net_retest,
            "network_retest_spearman": statistics.median(r for r in rhos if r is not None),
            "ratio_range_pct": statistics.median(ratios), "model": calibration.model, "coef": calibration.coef,
            "held_out": accuracy(predicted, measured_held)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="rpi4", choices=sorted(PRESETS), help="blocks and spaces of this preset")
    parser.add_argument("--rounds", type=int, default=4, help="measurement rounds (even; half fit, half score)")
    parser.add_argument("--networks", type=int, default=24, help="random whole networks")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per measurement")
    parser.add_argument("--samples", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--max-keys", type=int, default=0, help="measure only the blocks the networks use plus up to "
                                                                "this many others (0: only the networks' blocks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and of the round orders")
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    args = parser.parse_args()
    if args.rounds < 2 or args.rounds % 2:
        parser.error("--rounds must be an even number >= 2")
    spaces = preset_spaces(args.preset)
    archs = random_archs(spaces, args.networks, args.seed, prefix="study")
    side = PRESETS[args.preset]["latency_size"]
    keys = list(dict.fromkeys(b.key for a in archs for b in a.resolve(side)))
    if args.max_keys:
        extra = [k for s in spaces for k in s.latency_keys(side) if k not in keys and parse_block(k).family != "Zero"]
        keys += list(dict.fromkeys(extra))[: args.max_keys]
    burner = None
    if args.busy:
        burner = multiprocessing.Process(target=_burn, daemon=True)
        burner.start()
        time.sleep(2.0)
    start, load_start = time.time(), load_average()
    try:
        blocks, nets, loads = measure_all(keys, archs, args)
    finally:
        if burner is not None:
            burner.terminate()
    results = {name: score(name, blocks, nets, archs, args.rounds, side) for name in STATISTICS}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
              "machine": platform.node(), "threads": args.threads, "busy": args.busy, "rounds": args.rounds,
              "networks": len(archs), "blocks": len(keys), "warmup": args.warmup, "samples": args.samples,
              "seconds": round(time.time() - start, 1), "load_start": load_start,
              "load_median": statistics.median(loads) if loads else None, "statistics": results}
    print(f"{report['cpu']}, {args.threads} threads, {'one core busy' if args.busy else 'quiet'}, {len(keys)} "
          f"blocks + {len(archs)} networks x {args.rounds} rounds, {report['seconds']:.0f} s, load median "
          f"{report['load_median']}")
    print("| statistic | block retest | network retest | network Spearman | net/sum ratio range | model | held-out "
          "MAPE | held-out within 10% |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['block_retest_pct']:.2f}% | {r['network_retest_pct']:.2f}% | "
              f"{r['network_retest_spearman']:.3f} | {r['ratio_range_pct']:.2f}% | {r['model']} | "
              f"{r['held_out']['mape']:.1f}% | {r['held_out']['within10']:.0f}% |")
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
