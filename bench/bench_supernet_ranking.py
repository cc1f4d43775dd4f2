"""Does the supernet rank networks like training them does? (issue 22; a benchmark, not a test)

For one space and this machine's latency table:

1. ``nets``: a *spread* set (``--spread`` networks, one random network near each of evenly spaced predicted
   latencies over the space's range) and an *equal* set (``--equal`` random networks within ``--window`` of one
   predicted latency, the middle of the range by default). Random = the budgeted derive with Gumbel scores: a
   uniformly random ranking of candidates, conditioned on the latency window. Written once to ``networks.json``.
2. ``train``: every network trained alone with one recipe (``train.py --preset quick``) for each of ``--seeds``
   and scored with the official WIDER FACE protocol on the val set, ``--jobs`` runs at a time, one thread each.
3. ``supernet``: for each ``--variant NAME=SEARCH_ARGS``: ``search.py`` with those options into
   ``supernet/NAME/``, then every network's inherited AP (its path fixed, BatchNorm recalibrated on
   ``--bn-batches`` training batches; :mod:`nas.inherited`), written one network at a time to
   ``supernet/NAME/rank.json``.
4. ``report``: per variant and set, Kendall tau between inherited and stand-alone mean AP with a bootstrap 95%
   interval over networks; the seed spread against the spread of the networks' APs; ``report.md``,
   ``report.json`` and one scatter plot per variant.

Every phase skips work it finds done in ``--out`` (a killed run resumes; training runs resume from ``last.pth``), so
the study can span sessions: commit the folder as results come.

    python bench/bench_supernet_ranking.py --table bench/results/amd_1204b/table.json --phase train --jobs 2
    OMP_NUM_THREADS=1 python bench/bench_supernet_ranking.py --table ... --phase supernet --variant "default=" \\
        --variant "sandwich=--sandwich --distill 1 --lr-schedule cosine"
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_search_quality import run  # noqa: E402
from latency.internal_mode import LatencyTable  # noqa: E402
from latency.predict import edge_costs  # noqa: E402
from models.arch import Arch  # noqa: E402
from models.search_space import get_space  # noqa: E402
from nas.derive import budget_derive  # noqa: E402
from utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from utils.figures import pyplot, save_figure  # noqa: E402

PHASES = ("nets", "train", "supernet", "report")
SETTINGS = ("easy", "medium", "hard", "mean")
BN_BATCHES = 20


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(rng.random() or 1e-300))


def random_at(space: Any, costs: Any, target: float, window: float, rng: random.Random,
              seen: set[tuple[int, ...]], tries: int = 200) -> list[int] | None:
    """A random network whose predicted latency is within ``window`` of ``target``, not in ``seen``."""
    for _ in range(tries):
        scores = [[_gumbel(rng) for _ in edge] for edge in costs.edges]
        result = budget_derive(scores, costs, target, window)
        if result.status == "within" and tuple(result.choices) not in seen:
            seen.add(tuple(result.choices))
            return list(result.choices)
    return None


def phase_nets(args: argparse.Namespace, out: Path, table: LatencyTable) -> list[dict[str, Any]]:
    path = out / "networks.json"
    if path.is_file():
        return json.loads(path.read_text())
    space = get_space(args.space)
    costs = edge_costs(space, table)
    low, high = costs.smallest, costs.largest
    rng = random.Random(args.draw_seed)
    seen: set[tuple[int, ...]] = set()
    nets = []
    # evenly spaced targets, kept off the two extremes (each has a single network)
    for i in range(args.spread):
        target = low + (high - low) * (0.04 + 0.92 * i / max(1, args.spread - 1))
        choices = random_at(space, costs, target, args.window, rng, seen)
        if choices is None:
            raise SystemExit(f"no random network found within {args.window:g} of {target:.2f} ms")
        nets.append({"name": f"spread{i:02d}", "set": "spread", "choices": choices,
                     "predicted_ms": costs.of_paths(choices)})
    centre = args.equal_at or (low + high) / 2
    for i in range(args.equal):
        choices = random_at(space, costs, centre, args.window, rng, seen)
        if choices is None:
            raise SystemExit(f"no further random network within {args.window:g} of {centre:.2f} ms")
        nets.append({"name": f"equal{i:02d}", "set": "equal", "choices": choices,
                     "predicted_ms": costs.of_paths(choices)})
    for net in nets:
        net["arch"] = space.arch_from_choices(net["choices"], net["name"]).to_dict()
    atomic_write_json(path, nets)
    print(f"{args.spread} spread networks over {low:.2f}-{high:.2f} ms, {args.equal} at {centre:.2f} ms "
          f"(+-{100 * args.window:g}%)")
    return nets


def coverage_order(count: int) -> list[int]:
    """0..count-1 so that every prefix covers the range evenly: the ends, then the middles of the gaps."""
    if count <= 2:
        return list(range(count))
    order, gaps = [0, count - 1], [(0, count - 1)]
    while gaps:
        low, high = gaps.pop(0)
        if high - low < 2:
            continue
        middle = (low + high) // 2
        order.append(middle)
        gaps += [(low, middle), (middle, high)]
    return order


def phase_train(args: argparse.Namespace, out: Path, nets: list[dict[str, Any]]) -> None:
    spread = [n for n in nets if n["set"] == "spread"]
    ordered = [spread[i] for i in coverage_order(len(spread))] + [n for n in nets if n["set"] != "spread"]
    jobs = []
    for seed in args.seeds:  # seed-major, ends of the range first: a partial study already spans the range
        for net in ordered:
            arch_file = out / "archs" / f"{net['name']}.json"
            if not arch_file.is_file():
                Arch.from_dict(net["arch"]).save(arch_file)
            run_dir = out / "train" / f"{net['name']}_s{seed}"
            if (run_dir / "eval.json").is_file():
                continue
            command = [sys.executable, "train.py", "--model", str(arch_file), "--preset", "quick", "--seed",
                       str(seed), "--out-dir", str(run_dir), "--threads", str(args.threads), "--no-progress",
                       "--save-every", "0", *(["--data-root", args.data_root] if args.data_root else []),
                       *shlex.split(args.train_args)]
            if (run_dir / "last.pth").is_file():
                command += ["--resume", str(run_dir / "last.pth")]
            jobs.append((command, out / "logs" / f"train_{net['name']}_s{seed}.log"))
    print(f"{len(jobs)} training runs to do, {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run, c, log) for c, log in jobs]:
            future.result()


def parse_variants(items: list[str]) -> list[tuple[str, str]]:
    variants = []
    for item in items:
        name, sep, options = item.partition("=")
        if not sep or not name or "/" in name:
            raise SystemExit(f"--variant {item!r}: give NAME=SEARCH_OPTIONS (options may be empty)")
        variants.append((name, options))
    return variants


def phase_supernet(args: argparse.Namespace, out: Path, nets: list[dict[str, Any]], table: LatencyTable) -> None:
    from nas.inherited import InheritedScorer

    space = get_space(args.space)
    costs = edge_costs(space, table)
    target = args.target or (costs.smallest + costs.largest) / 2
    for name, options in parse_variants(args.variant):
        folder = out / "supernet" / name
        # the report reads rank.json (the default recalibration); other batch counts are a diagnosis beside it
        rank_file = folder / ("rank.json" if args.bn_batches == BN_BATCHES else f"rank_bn{args.bn_batches}.json")
        done = json.loads(rank_file.read_text()) if rank_file.is_file() else {"options": options, "networks": {}}
        todo = [n for n in nets if n["name"] not in done["networks"]]
        if not todo:
            continue  # scored already (the checkpoints are not committed: a clean clone skips it too)
        if not (folder / "last.pth").is_file() or not (folder / "history.json").is_file():
            resume = ["--resume"] if (folder / "last.pth").is_file() else []
            run([sys.executable, "search.py", "--latency-table", str(args.table), "--target", f"{target:.4g}",
                 "--space", args.space, "--out-dir", str(folder), "--seed", str(args.search_seed), "--no-progress",
                 *(["--data-root", args.data_root] if args.data_root else []),
                 *resume, *shlex.split(options)], out / "logs" / f"supernet_{name}.log")
        scorer = InheritedScorer(folder / "last.pth", space, args.data_root, args.bn_batches)
        for net in todo:
            done["networks"][net["name"]] = scorer.score(net["choices"], out / "rank_pred" / name / net["name"])
            done["bn_batches"] = args.bn_batches
            atomic_write_json(rank_file, done)
            print(f"{name}: inherited AP of {net['name']}: {100 * done['networks'][net['name']]['mean']:.2f}")


def kendall_with_interval(xs: list[float], ys: list[float], rounds: int, seed: int) -> dict[str, float]:
    """Kendall tau-b of ``xs`` against ``ys`` and its percentile bootstrap 95% interval (networks resampled)."""
    import numpy as np
    from scipy.stats import kendalltau

    tau = kendalltau(xs, ys)
    rng = np.random.default_rng(seed)
    x, y = np.asarray(xs), np.asarray(ys)
    samples = []
    for _ in range(rounds):
        pick = rng.integers(0, len(x), len(x))
        if len(set(pick.tolist())) < 3:
            continue
        value = kendalltau(x[pick], y[pick]).statistic
        if not math.isnan(value):
            samples.append(value)
    low, high = (np.percentile(samples, [2.5, 97.5]).tolist() if samples else [math.nan, math.nan])
    return {"tau": float(tau.statistic), "p": float(tau.pvalue), "low": float(low), "high": float(high),
            "n": len(xs)}


def stand_alone(out: Path, nets: list[dict[str, Any]], seeds: list[int]) -> dict[str, list[float]]:
    """Mean AP (percent) of every finished training run, per network."""
    found: dict[str, list[float]] = {}
    for net in nets:
        for seed in seeds:
            result = out / "train" / f"{net['name']}_s{seed}" / "eval.json"
            if result.is_file():
                found.setdefault(net["name"], []).append(100 * json.loads(result.read_text())["mean"])
    return found


def phase_report(args: argparse.Namespace, out: Path, nets: list[dict[str, Any]]) -> dict[str, Any]:
    alone = stand_alone(out, nets, args.seeds)
    variants = sorted(p.parent.name for p in (out / "supernet").glob("*/rank.json"))
    report: dict[str, Any] = {"space": args.space, "seeds": args.seeds, "variants": {}, "networks": []}
    for net in nets:
        aps = alone.get(net["name"], [])
        report["networks"].append({"name": net["name"], "set": net["set"], "predicted_ms": net["predicted_ms"],
                                   "ap_per_seed": aps, "ap": statistics.fmean(aps) if aps else None})
    for s in ("spread", "equal"):
        chosen = [r for r in report["networks"] if r["set"] == s and len(r["ap_per_seed"]) >= args.min_seeds]
        spreads = [max(r["ap_per_seed"]) - min(r["ap_per_seed"]) for r in chosen if len(r["ap_per_seed"]) > 1]
        means = [r["ap"] for r in chosen]
        report[f"{s}_seed_spread_median"] = statistics.median(spreads) if spreads else None
        report[f"{s}_ap_range"] = [min(means), max(means)] if means else None
    lines = ["| variant | options | set | networks | Kendall tau | 95% bootstrap CI | p | inherited AP range |",
             "|---|---|---|---|---|---|---|---|"]
    for name in variants:
        rank = json.loads((out / "supernet" / name / "rank.json").read_text())
        history_file = out / "supernet" / name / "history.json"
        seconds = (sum(h.get("seconds", 0.0) for h in json.loads(history_file.read_text()))
                   if history_file.is_file() else None)
        entry: dict[str, Any] = {"options": rank.get("options", ""), "training_seconds": seconds}
        for s in ("spread", "equal"):
            pairs = [(100 * rank["networks"][r["name"]]["mean"], r["ap"]) for r in report["networks"]
                     if r["set"] == s and r["name"] in rank["networks"] and len(r["ap_per_seed"]) >= args.min_seeds]
            if len(pairs) < 3:
                continue
            stats = kendall_with_interval([a for a, _ in pairs], [b for _, b in pairs], args.bootstrap, 0)
            stats["inherited_range"] = [min(a for a, _ in pairs), max(a for a, _ in pairs)]
            entry[s] = stats
            lines.append(f"| {name} | `{entry['options'] or '(defaults)'}` | {s} | {stats['n']} | "
                         f"{stats['tau']:+.2f} | [{stats['low']:+.2f}, {stats['high']:+.2f}] | {stats['p']:.3f} | "
                         f"{stats['inherited_range'][0]:.1f}-{stats['inherited_range'][1]:.1f} |")
        report["variants"][name] = entry
        scatter_plot(out, name, rank, report["networks"], entry)
    atomic_write_json(out / "report.json", report)
    rows = ["| network | set | predicted ms | stand-alone AP per seed | mean |", "|---|---|---|---|---|"]
    for r in report["networks"]:
        mean = "-" if r["ap"] is None else f"{r['ap']:.2f}"
        rows.append(f"| {r['name']} | {r['set']} | {r['predicted_ms']:.2f} | "
                    f"{', '.join(f'{v:.1f}' for v in r['ap_per_seed'])} | {mean} |")
    extra = (f"\nseed spread (max-min) median: spread set {report['spread_seed_spread_median']}, equal set "
             f"{report['equal_seed_spread_median']}; stand-alone AP range: spread {report['spread_ap_range']}, "
             f"equal {report['equal_ap_range']}\n")
    text = "\n".join(lines) + "\n\n" + "\n".join(rows) + "\n" + extra
    atomic_write_text(out / "report.md", text)
    print(text)
    return report


def scatter_plot(out: Path, name: str, rank: dict[str, Any], networks: list[dict[str, Any]],
                 entry: dict[str, Any]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for s, colour in (("spread", "tab:blue"), ("equal", "tab:orange")):
        rows = [r for r in networks if r["set"] == s and r["ap"] is not None and r["name"] in rank["networks"]]
        if not rows:
            continue
        xs = [r["ap"] for r in rows]
        ys = [100 * rank["networks"][r["name"]]["mean"] for r in rows]
        err = [[x - min(r["ap_per_seed"]) for x, r in zip(xs, rows)],
               [max(r["ap_per_seed"]) - x for x, r in zip(xs, rows)]]
        ax.errorbar(xs, ys, xerr=err, fmt="o", color=colour, capsize=3, label=f"{s} set ({len(rows)})")
    ax.set_xlabel("stand-alone mean AP (%, bars: min-max over seeds)")
    ax.set_ylabel("inherited mean AP of the supernet path (%)")
    taus = ", ".join(f"{s} tau {entry[s]['tau']:+.2f} [{entry[s]['low']:+.2f}, {entry[s]['high']:+.2f}]"
                     for s in ("spread", "equal") if s in entry)
    ax.set_title(f"Supernet ranking, variant '{name}' (space R5_V2, built-in data)\n{taus}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / f"ranking_{name}.png", dpi=110, tight=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", type=Path, required=True, help="this machine's latency table (calibrated)")
    parser.add_argument("--space", default="R5_V2", help="search space")
    parser.add_argument("--spread", type=int, default=12, help="networks spread over the latency range")
    parser.add_argument("--equal", type=int, default=6, help="networks of equal predicted latency")
    parser.add_argument("--equal-at", type=float, default=None, help="their latency (ms; default: mid-range)")
    parser.add_argument("--window", type=float, default=0.02, help="relative latency window of a draw")
    parser.add_argument("--draw-seed", type=int, default=22, help="seed of the draws")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="stand-alone training seeds")
    parser.add_argument("--min-seeds", type=int, default=1, help="seeds a network needs to enter the report")
    parser.add_argument("--threads", type=int, default=1, help="threads per training run")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    parser.add_argument("--train-args", default="", help="extra train.py options")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                        help="a supernet variant: search.py options (repeatable)")
    parser.add_argument("--target", type=float, default=None, help="search target (ms; default: mid-range)")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the supernet searches")
    parser.add_argument("--bn-batches", type=int, default=BN_BATCHES,
                        help="BatchNorm recalibration batches per path (0: the supernet's shared statistics); "
                             "other than the default, the scores go to rank_bn<N>.json beside rank.json")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds of the tau interval")
    parser.add_argument("--data-root", default=None, help="dataset (default: the built-in synthetic one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ranking" / "R5_V2",
                        help="work folder")
    parser.add_argument("--phase", choices=(*PHASES, "all"), default="all", help="run one phase only")
    args = parser.parse_args()
    table = LatencyTable.load(args.table)
    phases = PHASES if args.phase == "all" else (args.phase,)
    nets = phase_nets(args, args.out, table)
    if "train" in phases:
        phase_train(args, args.out, nets)
    if "supernet" in phases:
        phase_supernet(args, args.out, nets, table)
    if "report" in phases:
        phase_report(args, args.out, nets)


if __name__ == "__main__":
    main()
