"""Does the search beat random search at the same latency? (issue 14; a benchmark, not a test)

For one space, one target and this machine's latency table:

1. ``search``: ``search.py`` with its default CPU budget and the budgeted derive -> the searched network;
2. ``draw``: ``--random K`` networks of the same space drawn uniformly per edge (the random-search baseline) and kept
   only when their predicted latency is within 2% of the searched network's (rejection sampling; if too few are
   found in ``--max-draws`` draws, the rest are drawn by the budgeted derive with random Gumbel scores, i.e. a
   uniformly random *ranking* conditioned on the window; the report says how many of each);
3. ``train``: every network (searched, random, and the ``--registered`` networks of the preset) trained from scratch
   with one recipe and budget (``train.py --preset quick``, ``--epochs``) for each seed of ``--seeds``, then scored
   with the official WIDER FACE protocol on the built-in val set (or ``--data-root``);
4. ``rank``: the supernet of step 1, with each network's path fixed and BatchNorm statistics recomputed on training
   batches, scored on the same val set: how well does weight sharing rank the networks (Kendall tau against their
   stand-alone AP)?
5. ``measure``: every backbone's latency end to end with the table's protocol (run on a quiet machine);
6. ``report``: a markdown table, a JSON file and the Pareto plot (mean AP against measured latency, seed spread as
   error bars).

Each phase skips the work it finds done in ``--out``, so the benchmark resumes, and ``--phase`` runs one at a time
(``--phase train --jobs 2`` trains two networks at once with one thread each).

    python bench/bench_search_quality.py --table bench/tables/rpi4_cpu_320.json --space R5_V2 --target 24
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latency.drift import STORED_PREFIX, machine_drift, stored_networks  # noqa: E402
from latency.internal_mode import LatencyTable  # noqa: E402
from latency.measure import cpu_model, load_average  # noqa: E402
from latency.predict import edge_costs, predict_latency  # noqa: E402
from latency.random_archs import random_choices  # noqa: E402
from latency.runtimes import measure_table_networks  # noqa: E402
from models import published_arch  # noqa: E402
from models.arch import Arch  # noqa: E402
from models.search_space import get_space  # noqa: E402
from nas.derive import budget_derive  # noqa: E402
from utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from utils.figures import pyplot, save_figure  # noqa: E402

PHASES = ("search", "draw", "train", "rank", "measure", "report")
SETTINGS = ("easy", "medium", "hard", "mean")


def run(command: list[str], log: Path, threads: int | None = None) -> None:
    """Run a command from the repository root, its output appended to ``log``; raise on failure.

    ``threads`` sets the intra-op thread count of a command without a ``--threads`` option (``OMP_NUM_THREADS``).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log.open("a", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


# ------------------------------------------------------------------------------------------------ phases
def search_dir(out: Path, index: int, seed: int) -> Path:
    """Folder of the index-th search (the first keeps the name ``search`` of single-seed studies)."""
    return out / "search" if index == 0 else out / f"search_s{seed}"


def phase_search(args: argparse.Namespace, out: Path) -> None:
    """The searches, ``--jobs`` at a time with ``--threads`` threads each (resumed from ``last.pth``)."""
    jobs = []
    for index, seed in enumerate(args.search_seeds):
        folder = search_dir(out, index, seed)
        if (folder / "arch.json").is_file():
            continue
        resume = ["--resume"] if (folder / "last.pth").is_file() else []
        jobs.append(([sys.executable, "search.py", "--latency-table", str(args.table), "--target", f"{args.target:g}",
                      "--space", args.space, "--out-dir", str(folder), "--seed", str(seed), "--no-progress", *resume,
                      *(["--data-root", args.data_root] if args.data_root else []), *shlex.split(args.search_args)],
                     out / "logs" / f"search_s{seed}.log"))
    print(f"{len(jobs)} searches to do, {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run, c, log, args.threads) for c, log in jobs]:
            future.result()


def phase_draw(args: argparse.Namespace, out: Path, table: LatencyTable) -> list[dict[str, Any]]:
    """The networks of the study (searched, random, registered), written to ``networks.json`` once."""
    path = out / "networks.json"
    if path.is_file():
        return json.loads(path.read_text())
    space = get_space(args.space)
    searches = [Arch.load(search_dir(out, i, seed) / "arch.json") for i, seed in enumerate(args.search_seeds)]
    centre = statistics.fmean(predict_latency(a, table) for a in searches)
    low, high = centre * (1 - args.window), centre * (1 + args.window)
    rng = random.Random(args.draw_seed)
    seen, drawn = {tuple(a.meta["choices"]) for a in searches}, []
    if args.random_from:
        drawn = reuse_random(args.random_from, table, centre, args.window, args.random, seen)
    draws = 0
    while len(drawn) < args.random and draws < args.max_draws:
        draws += 1
        choices = random_choices(space, rng)
        if tuple(choices) in seen:
            continue
        arch = space.arch_from_choices(choices, f"random{len(drawn):02d}")
        if low <= predict_latency(arch, table) <= high:
            seen.add(tuple(choices))
            drawn.append((arch, "rejection"))
    costs = edge_costs(space, table)
    while len(drawn) < args.random:  # Gumbel scores: a random network conditioned on the window
        scores = [[_gumbel(rng) for _ in edge] for edge in costs.edges]
        result = budget_derive(scores, costs, centre, args.window)
        if tuple(result.choices) not in seen and result.status == "within":
            seen.add(tuple(result.choices))
            drawn.append((space.arch_from_choices(result.choices, f"random{len(drawn):02d}"), "gumbel"))
    nets = [{"name": "searched" if i == 0 else f"searched_s{seed}", "kind": "searched", "arch": a.to_dict(),
             "how": f"search seed {seed} + budget derive"}
            for i, (a, seed) in enumerate(zip(searches, args.search_seeds))]
    nets += [{"name": a.name, "kind": "random", "arch": a.to_dict(), "how": how} for a, how in drawn]
    if args.random_from:
        copy_finished_runs(args.random_from, out, [a.name for a, how in drawn if how.startswith("reused")], args)
    for name in args.registered:
        arch = published_arch(name)
        nets.append({"name": arch.name, "kind": "registered", "arch": arch.to_dict(), "how": "registered"})
    for net in nets:
        net["predicted_ms"] = predict_latency(Arch.from_dict(net["arch"]), table, measure_missing=True)
    atomic_write_json(path, nets)
    print(f"drew {len(drawn)} random networks within +-{100 * args.window:g}% of {centre:.2f} ms "
          f"({sum(h == 'rejection' for _, h in drawn)} by rejection in {draws} uniform draws)")
    return nets


def reuse_random(study: Path, table: LatencyTable, centre: float, window: float, count: int,
                 seen: set[tuple[int, ...]]) -> list[tuple[Arch, str]]:
    """Random networks of another study (``--random-from``) whose prediction lies within the window, nearest first.

    Both the random networks of a search-quality study and the equal-latency set of the ranking benchmark qualify:
    they were drawn the same way (uniform per edge or Gumbel-ranked under the window), independently of any search.
    """
    found = []
    for net in json.loads((study / "networks.json").read_text()):
        if net.get("kind", "random") != "random" or net.get("set", "equal") != "equal":
            continue
        arch = Arch.from_dict(net["arch"])
        arch.name = net["name"]
        gap = abs(predict_latency(arch, table) / centre - 1)
        if gap <= window and tuple(arch.meta["choices"]) not in seen:
            found.append((gap, arch))
    found.sort(key=lambda item: item[0])
    for _, arch in found[:count]:
        seen.add(tuple(arch.meta["choices"]))
    return [(arch, f"reused from {study.name}") for _, arch in found[:count]]


def same_quick_recipe(config_file: Path, args: argparse.Namespace) -> bool:
    """Whether a finished run used the recipe this study trains with (the quick preset, no overrides)."""
    import yaml

    from train import RECIPES

    if args.epochs or args.train_args.strip() or not config_file.is_file():
        return False
    config = yaml.safe_load(config_file.read_text())
    quick = {k.replace("_", "-"): v for k, v in RECIPES["quick"].items()}
    return config.get("preset") == "quick" and config.get("data-root") == args.data_root and all(
        config.get(key) == value for key, value in quick.items())


def copy_finished_runs(study: Path, out: Path, names: list[str], args: argparse.Namespace) -> None:
    """Copy the finished training runs (scores, config, log) of reused networks: same recipe, same seed, same
    result (training is deterministic), so they need not be trained again; the recipe is checked before copying."""
    import shutil

    for name in names:
        for run_dir in sorted((study / "train").glob(f"{name}_s*")):
            if not (run_dir / "eval.json").is_file():
                continue
            if not same_quick_recipe(run_dir / "config.yaml", args):
                print(f"not reusing {run_dir}: its recipe differs from this study's")
                continue
            target = out / "train" / run_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for item in ("eval.json", "config.yaml", "train.log"):
                if (run_dir / item).is_file():
                    shutil.copy2(run_dir / item, target / item)


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(rng.random() or 1e-300))


def phase_train(args: argparse.Namespace, out: Path, nets: list[dict[str, Any]]) -> None:
    jobs = []
    for net in nets:
        arch_file = out / "archs" / f"{net['name']}.json"
        if not arch_file.is_file():
            Arch.from_dict(net["arch"]).save(arch_file)
        for seed in seeds_of(args, net):
            run_dir = out / "train" / f"{net['name']}_s{seed}"
            if (run_dir / "eval.json").is_file():
                continue
            command = [sys.executable, "train.py", "--model", str(arch_file), "--preset", "quick", "--seed",
                       str(seed), "--out-dir", str(run_dir), "--threads", str(args.threads), "--no-progress",
                       "--save-every", "0"]
            if args.epochs:
                command += ["--epochs", str(args.epochs), "--decay-epochs", str(max(1, args.epochs - 1))]
            if args.data_root:
                command += ["--data-root", args.data_root]
            command += shlex.split(args.train_args)
            if (run_dir / "last.pth").is_file():
                command += ["--resume", str(run_dir / "last.pth")]
            jobs.append((command, out / "logs" / f"train_{net['name']}_s{seed}.log"))
    print(f"{len(jobs)} training runs to do, {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run, c, log) for c, log in jobs]:
            future.result()


def seeds_of(args: argparse.Namespace, net: dict[str, Any]) -> list[int]:
    """Training seeds of a network: the reference networks may use fewer (``--registered-seeds``)."""
    if net["kind"] == "registered" and args.registered_seeds is not None:
        return args.registered_seeds
    return args.seeds


def phase_rank(args: argparse.Namespace, out: Path, nets: list[dict[str, Any]]) -> None:
    """Supernet-inherited AP of every network of the space (BatchNorm recalibrated on training batches), scored on
    the first search's supernet."""
    from nas.inherited import InheritedScorer

    path = out / "rank.json"
    if path.is_file():
        return
    scorer = InheritedScorer(out / "search" / "last.pth", get_space(args.space), args.data_root, args.bn_batches)
    results = {}
    for item in nets:
        if item["kind"] == "registered":
            continue
        results[item["name"]] = scorer.score(Arch.from_dict(item["arch"]).meta["choices"],
                                             out / "rank_pred" / item["name"])
        print(f"supernet AP of {item['name']}: {100 * results[item['name']]['mean']:.2f}")
    atomic_write_json(path, {"bn_batches": args.bn_batches, "networks": results})


def phase_measure(args: argparse.Namespace, out: Path, nets: list[dict[str, Any]], table: LatencyTable) -> None:
    path = out / "latency.json"
    if path.is_file():
        return
    archs = []
    for net in nets:
        arch = Arch.from_dict(net["arch"])
        arch.name = net["name"]
        archs.append(arch)
    stored = stored_networks(table, 8)  # in the same rounds: how far the machine moved since profiling
    start, load = time.time(), load_average()
    results = measure_table_networks(archs + [a for a, _, _ in stored], table.meta, repeats=args.repeats, seed=0)
    drift = machine_drift(stored, results)
    atomic_write_json(path, {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                             "load_start": load, "load_end": load_average(), "seconds": time.time() - start,
                             "repeats": args.repeats, "drift": drift["drift"] if drift else None,
                             "networks": {k: v for k, v in results.items() if not k.startswith(STORED_PREFIX)},
                             "stored": {k: v for k, v in results.items() if k.startswith(STORED_PREFIX)}})


def phase_report(args: argparse.Namespace, out: Path, nets: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import kendalltau

    timing = json.loads((out / "latency.json").read_text()) if (out / "latency.json").is_file() else {}
    latency = timing.get("networks", {})
    rank = json.loads((out / "rank.json").read_text())["networks"] if (out / "rank.json").is_file() else {}
    rows = []
    for net in nets:
        aps = []
        for seed in seeds_of(args, net):
            result = out / "train" / f"{net['name']}_s{seed}" / "eval.json"
            if result.is_file():
                aps.append({s: 100 * json.loads(result.read_text())[s] for s in SETTINGS})
        row = {"name": net["name"], "kind": net["kind"], "how": net["how"], "predicted_ms": net["predicted_ms"],
               "measured_ms": latency.get(net["name"], {}).get("measured_ms"), "seeds": len(aps),
               "ap": {s: statistics.fmean(a[s] for a in aps) for s in SETTINGS} if aps else None,
               "ap_per_seed": [a["mean"] for a in aps],
               "supernet_ap": 100 * rank[net["name"]]["mean"] if net["name"] in rank else None}
        rows.append(row)
    trained = [r for r in rows if r["ap"]]
    random_rows = [r for r in trained if r["kind"] == "random"]
    searched_rows = [r for r in trained if r["kind"] == "searched"]
    searched = searched_rows[0] if searched_rows else None
    spread = [max(r["ap_per_seed"]) - min(r["ap_per_seed"]) for r in trained if len(r["ap_per_seed"]) > 1]
    summary: dict[str, Any] = {"seed_spread_median": statistics.median(spread) if spread else None,
                               "machine_drift": timing.get("drift")}
    if searched and random_rows:
        means = sorted((r["ap"]["mean"] for r in random_rows), reverse=True)
        summary.update(random_mean=statistics.fmean(means), random_best=means[0],
                       searched=searched["ap"]["mean"], margin=searched["ap"]["mean"] - statistics.fmean(means),
                       searched_rank=1 + sum(m > searched["ap"]["mean"] for m in means), random_count=len(means))
    summary.update(search_vs_random(searched_rows, random_rows, out, args.seeds))
    ranked = [r for r in trained if r["supernet_ap"] is not None]
    if len(ranked) >= 3:
        tau = kendalltau([r["supernet_ap"] for r in ranked], [r["ap"]["mean"] for r in ranked])
        summary.update(kendall_tau=float(tau.statistic), kendall_p=float(tau.pvalue), ranked=len(ranked))
    report = {"space": args.space, "target": args.target, "table": str(args.table), "seeds": args.seeds,
              "epochs": args.epochs or "quick preset", "rows": rows, "summary": summary}
    atomic_write_json(out / "report.json", report)
    lines = ["| network | kind | predicted ms | measured ms | Easy | Medium | Hard | mean AP | per seed | "
             "supernet AP |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        ap = r["ap"] or {}
        lines.append(f"| {r['name']} | {r['kind']} | {r['predicted_ms']:.2f} | {fmt(r['measured_ms'])} | "
                     f"{fmt(ap.get('easy'))} | {fmt(ap.get('medium'))} | {fmt(ap.get('hard'))} | "
                     f"{fmt(ap.get('mean'))} | {', '.join(f'{v:.2f}' for v in r['ap_per_seed'])} | "
                     f"{fmt(r['supernet_ap'])} |")
    text = "\n".join(lines) + "\n\n" + json.dumps(summary, indent=1) + "\n"
    atomic_write_text(out / "report.md", text)
    print(text)
    if trained and all(r["measured_ms"] for r in trained):
        pareto_plot(trained, args, out / "pareto.png")
    return report


def search_vs_random(searched: list[dict[str, Any]], randoms: list[dict[str, Any]], out: Path,
                     seeds: list[int]) -> dict[str, Any]:
    """One-sided tests of "searched networks are more accurate than random ones of the same latency".

    * permutation: network-level mean APs, the difference of the two groups' means against every relabelling of
      the networks into groups of the same sizes (exact);
    * paired by training seed: per seed, the searched networks' mean AP minus the random networks' mean AP, a
      Wilcoxon signed-rank test over seeds (only seeds every network finished).
    """
    import numpy as np
    from scipy.stats import wilcoxon

    if not searched or len(randoms) < 2:
        return {}
    a = np.array([r["ap"]["mean"] for r in searched])
    b = np.array([r["ap"]["mean"] for r in randoms])
    result: dict[str, Any] = {"searched_networks": len(a), "searched_mean_of_networks": float(a.mean()),
                              "margin_of_means": float(a.mean() - b.mean())}
    pooled, observed = np.concatenate([a, b]), a.mean() - b.mean()
    differences = []
    for pick in itertools.combinations(range(len(pooled)), len(a)):  # every relabelling (small groups: exact)
        mask = np.zeros(len(pooled), dtype=bool)
        mask[list(pick)] = True
        differences.append(pooled[mask].mean() - pooled[~mask].mean())
    result["permutation_p"] = float(np.mean(np.asarray(differences) >= observed - 1e-12))
    per_seed = []
    for seed in seeds:
        values = {}
        for r in searched + randoms:
            path = out / "train" / f"{r['name']}_s{seed}" / "eval.json"
            if path.is_file():
                values[r["name"]] = 100 * json.loads(path.read_text())["mean"]
        if len(values) == len(searched) + len(randoms):
            per_seed.append(float(np.mean([values[r["name"]] for r in searched])
                                  - np.mean([values[r["name"]] for r in randoms])))
    result["paired_seed_differences"] = per_seed
    if len(per_seed) >= 3:
        result["wilcoxon_p"] = float(wilcoxon(per_seed, alternative="greater").pvalue)
    return result


def pareto_plot(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"searched": ("tab:red", "*", 220), "random": ("tab:gray", "o", 50), "registered": ("tab:blue", "s", 60)}
    for kind, (colour, marker, size) in styles.items():
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        xs = [r["measured_ms"] for r in chosen]
        ys = [r["ap"]["mean"] for r in chosen]
        low = [y - min(r["ap_per_seed"]) for y, r in zip(ys, chosen)]
        high = [max(r["ap_per_seed"]) - y for y, r in zip(ys, chosen)]
        ax.errorbar(xs, ys, yerr=[low, high], fmt="none", ecolor=colour, alpha=0.6, capsize=3)
        ax.scatter(xs, ys, c=colour, marker=marker, s=size, label=f"{kind} ({len(chosen)})", zorder=3)
        if kind == "registered":
            for x, y, r in zip(xs, ys, chosen):
                ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("measured backbone latency (ms, this CPU, table protocol)")
    ax.set_ylabel("mean WIDER FACE AP on the built-in val set (%)")
    ax.set_title(f"Search vs random search, space {args.space}, target {args.target:g} ms; "
                 f"bars: min-max over {len(args.seeds)} seeds", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120, tight=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", type=Path, required=True, help="this machine's latency table (calibrated)")
    parser.add_argument("--space", default="R5_V2", help="search space")
    parser.add_argument("--target", type=float, required=True, help="target backbone latency (ms)")
    parser.add_argument("--random", type=int, default=5, help="random networks at the searched network's latency")
    parser.add_argument("--window", type=float, default=0.02, help="relative latency window of the random draws")
    parser.add_argument("--max-draws", type=int, default=200_000, help="uniform draws before the Gumbel fallback")
    parser.add_argument("--draw-seed", type=int, default=7, help="seed of the random draws")
    parser.add_argument("--registered", nargs="*", default=["R12_V3_HS", "R11_V2_HS", "mobilenetv1_0.25"],
                        help="registered networks trained alongside")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of every network")
    parser.add_argument("--registered-seeds", type=int, nargs="*", default=None,
                        help="training seeds of the registered networks (reference points; default: --seeds)")
    parser.add_argument("--random-from", type=Path, default=None,
                        help="take random networks within the window from this study folder (a search-quality study "
                             "or the ranking benchmark's equal set) and copy their finished runs; the rest are drawn")
    parser.add_argument("--epochs", type=int, default=0, help="training epochs (0: the quick preset's 6)")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0], help="seeds of the searches (each gives "
                        "one searched network)")
    parser.add_argument("--threads", type=int, default=1, help="threads per training run (and search)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs (and searches) at a time")
    parser.add_argument("--bn-batches", type=int, default=20, help="training batches that recompute BatchNorm "
                                                                   "statistics of a supernet path")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the latency measurement")
    parser.add_argument("--data-root", default=None, help="dataset (default: the built-in synthetic one)")
    parser.add_argument("--search-args", default="", help="extra search.py options, e.g. '--search-epochs 12'")
    parser.add_argument("--train-args", default="", help="extra train.py options, e.g. '--img-size 640'")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: bench/results/"
                                                               "search_quality/<space>_T<target>)")
    parser.add_argument("--phase", choices=(*PHASES, "all"), default="all", help="run one phase only")
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / "search_quality" / f"{args.space}_T{args.target:g}"
    table = LatencyTable.load(args.table)
    phases = PHASES if args.phase == "all" else (args.phase,)
    if "search" in phases:
        phase_search(args, out)
    nets = phase_draw(args, out, table) if set(phases) - {"search"} else []
    if "train" in phases:
        phase_train(args, out, nets)
    if "rank" in phases:
        phase_rank(args, out, nets)
    if "measure" in phases:
        phase_measure(args, out, nets, table)
    if "report" in phases:
        phase_report(args, out, nets)


if __name__ == "__main__":
    main()
