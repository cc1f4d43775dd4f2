"""Does a profile's error follow its measurement order? (issue 11; a benchmark, not a test; no timing, reads tables.)

Two profiles of one device should differ by one global factor (the machine's state) plus independent noise per
block. When the device's speed drifts *during* a pass, the ratio between two profiles instead wanders smoothly
along the order the blocks were measured in, and since the profiler measures family by family, that wandering
becomes an error per block family. This reads two or more latency tables and, for every pair, prints the median
ratio, the spread of the per-block log ratio after removing that median, its lag-1 autocorrelation along the first
table's measurement order (the order of its entries: the profiler adds them as it measures) and its mean over
consecutive windows of blocks; with ``--plot`` it draws the log ratios against the measurement index.

    python bench/bench_profile_drift.py bench/results/rpi4_ort_320_1926_table.json bench/tables/rpi4_ort_320.json \\
        --plot bench/results/profile_drift.png

Independent noise gives an autocorrelation near 0; a drift during the pass gives 0.5 and more. Tables measured with
the drift anchor (``meta.anchor``, ``latency/anchor.py``) should show the former.
"""
from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latency.table_format import TableFile  # noqa: E402
from utils.errors import FaceNASError, run_cli  # noqa: E402
from utils.options import POSITIVE_INT  # noqa: E402


def pair_drift(first: TableFile, second: TableFile, window: int) -> dict:
    """Log ratios of the blocks two tables share, in ``first``'s measurement order, and their statistics."""
    keys = [key for key in first.entries if key in second.entries]
    if len(keys) < 3:
        raise FaceNASError(f"{first.path} and {second.path} share {len(keys)} blocks; at least 3 are needed")
    logs = [math.log(first.value(key) / second.value(key)) for key in keys]
    centre = statistics.median(logs)
    logs = [value - centre for value in logs]
    mean = statistics.fmean(logs)
    variance = sum((v - mean) ** 2 for v in logs)
    lag1 = sum((a - mean) * (b - mean) for a, b in zip(logs, logs[1:])) / variance if variance > 0 else 0.0
    windows = [statistics.fmean(logs[i:i + window]) for i in range(0, len(logs), window)]
    return {"n": len(keys), "median_ratio": math.exp(centre), "sd_log": statistics.pstdev(logs), "lag1": lag1,
            "windows": windows, "logs": logs, "anchored": (bool(first.meta.get("anchor")),
                                                          bool(second.meta.get("anchor")))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("tables", nargs="+", help="two or more latency tables of one device")
    parser.add_argument("--window", type=POSITIVE_INT, default=16, help="blocks per window mean")
    parser.add_argument("--plot", help="PNG of the log ratios along the measurement order (default: none)")
    args = parser.parse_args(argv)
    if len(args.tables) < 2:
        parser.error("give at least two tables")
    tables = [TableFile.load(path) for path in args.tables]
    results = []
    for first, second in itertools.combinations(tables, 2):
        result = pair_drift(first, second, args.window)
        results.append((first, second, result))
        flags = "/".join("anchored" if a else "raw" for a in result["anchored"])
        print(f"{Path(str(first.path)).name} vs {Path(str(second.path)).name} ({flags}): {result['n']} blocks, "
              f"median ratio {result['median_ratio']:.3f}, sd(log) {result['sd_log']:.3f}, lag-1 autocorrelation "
              f"{result['lag1']:.2f}; window means {' '.join(f'{w:+.3f}' for w in result['windows'])}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(10, 4))
        for first, second, result in results:
            ax.plot([100 * (math.exp(v) - 1) for v in result["logs"]], lw=1,
                    label=f"{Path(str(first.path)).stem} / {Path(str(second.path)).stem} (lag-1 {result['lag1']:.2f})")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("block, in the first table's measurement order")
        ax.set_ylabel("ratio to the other table, % (median removed)")
        ax.set_title("Per-block ratio between two profiles of one device")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    run_cli(main)
