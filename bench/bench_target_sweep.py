"""Target sweep of the default flow (issue 10; a benchmark, not a test): does every derived network land on its target?

For each space (default R5_V2 and R9: MBV1/KK/DK and MBV1/MBV2 families) and five targets spread geometrically over
the lower to upper part of the space's reachable range on the given table, ``search.py`` runs with its **default
CPU search budget** (only the space, target, table and output folder are given). From every ``arch.json`` both
derives are taken: the budgeted one (written) and the argmax one (recorded in ``meta.derive``). Then every network is
measured end to end with the table's protocol (interleaved rounds, on a quiet machine), and the report counts how
many land within 2% (predicted) and within 5% / 10% (measured) of their targets.

Phases (each resumes what it finds done): ``search`` (``--jobs 2`` runs two searches at once with one thread each;
they only train, so they may share the machine), ``measure`` (timing: run it alone), ``report``.

    python bench/bench_target_sweep.py --table bench/tables/rpi4_cpu_320.json --phase search --jobs 2
    python bench/bench_target_sweep.py --table bench/tables/rpi4_cpu_320.json --phase measure
    python bench/bench_target_sweep.py --table bench/tables/rpi4_cpu_320.json --phase report
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latency.drift import machine_drift, stored_networks  # noqa: E402
from latency.internal_mode import LatencyTable  # noqa: E402
from latency.measure import cpu_model, load_average  # noqa: E402
from latency.predict import edge_costs, predict_latency  # noqa: E402
from latency.runtimes import measure_table_networks  # noqa: E402
from models.arch import Arch  # noqa: E402
from models.search_space import get_space  # noqa: E402
from utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402

POSITIONS = (0.15, 0.325, 0.5, 0.675, 0.85)


def targets_of(space_name: str, table: LatencyTable) -> list[float]:
    """Five targets from the lower to the upper part of the space's reachable range (geometric positions)."""
    costs = edge_costs(get_space(space_name), table, measure_missing=True)
    low, high = costs.smallest, costs.largest
    return [round(low * (high / low) ** f, 2) for f in POSITIONS]


def run_search(table: Path, space: str, target: float, out: Path, extra: list[str], threads: int) -> None:
    if (out / "arch.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # a killed search resumes from its own checkpoint (same seed, same result) instead of starting over
    resume = ["--resume"] if (out / "last.pth").is_file() or (out / "warmup.pth").is_file() else []
    command = [sys.executable, "search.py", "--latency-table", str(table), "--target", f"{target:g}", "--space",
               space, "--out-dir", str(out), "--no-progress", *resume, *extra]
    with (out.parent / f"{out.name}.stdout").open("a", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise SystemExit(f"search failed: {' '.join(command)} (see {out.parent / (out.name + '.stdout')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", type=Path, required=True, help="the (calibrated) latency table of this machine")
    parser.add_argument("--spaces", nargs="+", default=["R5_V2", "R9"], help="search spaces")
    parser.add_argument("--phase", choices=("search", "measure", "report", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=1, help="searches at a time (one thread each when > 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--search-args", nargs=argparse.REMAINDER, default=[],
                        help="extra search.py options (default: none, the default CPU budget)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "target_sweep",
                        help="work folder")
    args = parser.parse_args()
    table = LatencyTable.load(args.table)
    plan = [(space, target) for space in args.spaces for target in targets_of(space, table)]
    folder = {(s, t): args.out / f"{s}_T{t:g}" for s, t in plan}
    if args.phase in ("search", "all"):
        threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_search, args.table, s, t, folder[s, t], args.search_args, threads)
                       for s, t in plan]
            for future in futures:
                future.result()
    if args.phase in ("measure", "all"):
        archs = []
        for (space, target), out in folder.items():
            arch = Arch.load(out / "arch.json")
            argmax = get_space(space).arch_from_choices(arch.meta["derive"]["argmax"]["choices"])
            arch.name, argmax.name = f"budget_{space}_T{target:g}", f"argmax_{space}_T{target:g}"
            archs += [arch, argmax]
        stored = stored_networks(table, 8)  # re-measured in the same rounds: how far the machine drifted
        start, load = time.time(), load_average()
        measured = measure_table_networks(list({a.name: a for a in archs}.values()) + [a for a, _, _ in stored],
                                          table.meta, args.repeats, seed=0)
        drift = machine_drift(stored, measured)
        atomic_write_json(args.out / "measured.json", {
            "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load,
            "load_end": load_average(), "seconds": round(time.time() - start, 1), "repeats": args.repeats,
            "drift": drift["drift"] if drift else 0.0, "drift_range": [drift["low"], drift["high"]] if drift else None,
            "networks": measured})
    if args.phase in ("report", "all"):
        measured = json.loads((args.out / "measured.json").read_text())
        rows, counts = [], {"budget": [0, 0, 0, 0], "argmax": [0, 0, 0, 0]}
        drift = measured.get("drift", 0.0)
        for (space, target), out in folder.items():
            meta = Arch.load(out / "arch.json").meta
            for method in ("budget", "argmax"):
                derived = meta["derive"][method]
                predicted = derived["predicted"]
                ms = measured["networks"][f"{method}_{space}_T{target:g}"]
                gap_p, gap_m = predicted / target - 1, ms["measured_ms"] / target - 1
                counts[method][0] += abs(gap_p) <= 0.02 + 1e-9
                counts[method][1] += abs(gap_m) <= 0.05
                counts[method][2] += abs(gap_m) <= 0.10
                counts[method][3] += abs((1 + gap_m) / (1 + drift) - 1) <= 0.10
                rows.append(f"| {space} | {target:g} | {method} | {predicted:.2f} | {100 * gap_p:+.1f}% | "
                            f"{ms['measured_ms']:.2f} | {100 * gap_m:+.1f}% | {ms['spread']:.1f}% | "
                            f"{derived['status']} |")
        n = len(folder)
        check = table.meta.get("calibration") or {}
        head = (f"{measured['cpu']}, table {args.table} (threads {table.meta.get('threads')}, estimator "
                f"{table.estimator}, calibration {check.get('model')}), measured {measured['date']} "
                f"(load {measured['load_start']} -> {measured['load_end']}, {measured['repeats']} rounds); the "
                f"table's own networks ran {100 * drift:+.1f}% against their stored latency (machine drift)\n\n"
                "| space | target ms | derive | predicted ms | pred gap | measured ms | meas gap | spread | status |\n"
                "|---|---|---|---|---|---|---|---|---|\n")
        text = head + "\n".join(rows) + "\n\n" + "\n".join(
            f"{method}: predicted within 2% {c[0]}/{n}, measured within 5% {c[1]}/{n}, within 10% {c[2]}/{n} "
            f"(within 10% with the machine drift taken out: {c[3]}/{n})"
            for method, c in counts.items()) + "\n"
        atomic_write_text(args.out / "report.md", text)
        print(text)
        for out in folder.values():  # the predictions above must be the table's as it is now
            arch = Arch.load(out / "arch.json")
            if abs(predict_latency(arch, table) / arch.meta["derive"]["budget"]["predicted"] - 1) > 1e-6:
                print(f"warning: {args.table} changed since {out} was searched: its predictions differ now")


if __name__ == "__main__":
    main()
