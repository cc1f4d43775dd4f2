"""Compare latency tables block by block: how much does another runtime or precision speed up each block family?

INT8 does not speed every block alike (issue 23): depthwise and small-channel blocks gain less than dense 3x3
convolutions, which is why a search on a float table optimises the wrong trade-offs for an INT8 deployment. This
tool puts numbers on it from the tables themselves. For every block key that the base table and another table both
measured it takes the ratio ``other / base`` of their raw (uncalibrated) values, each table read with its own
estimator, and summarises the ratios per block family: count, geometric mean, median, minimum and maximum, and the
Spearman rank correlation of the family's blocks between the two tables (does the order of the family's variants
survive the change of runtime). Whole networks that both tables measured end to end (the profiler's calibration and
validation networks, matched by name and checked to be the same architecture) give the network-level ratio beside
it. A ratio below 1 means the other table's runtime is faster.

Both tables must describe the same workload (metric, batch and input resolution); runtime, precision, threads and
device may differ: that is what is compared.

Examples::

    python tools/compare_tables.py --tables rpi4_ort_fp32.json rpi4_ort_int8.json
    python tools/compare_tables.py --tables ort.json ort_int8.json ncnn.json --labels ORT ORT-int8 ncnn \\
        --out bench/results/int8/families      # writes families.md, families.json, families.png
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latency.accuracy import spearman  # noqa: E402
from latency.table_format import TableFile  # noqa: E402
from models.naming import FAMILIES, parse_block  # noqa: E402
from utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from utils.errors import FaceNASError, run_cli  # noqa: E402
from utils.options import OptionParser, check_output_file  # noqa: E402

#: What must agree between two tables for their block ratios to mean something.
WORKLOAD_FIELDS = ("metric", "batch", "resolution")


def describe(table: TableFile) -> str:
    """A short label of what a table measured, e.g. ``onnxruntime int8, 1 thread``."""
    meta = table.meta
    threads = meta.get("threads")
    parts = [str(meta.get("runtime") or "torch"), str(meta.get("precision") or "float32")]
    return " ".join(parts) + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")


def check_comparable(base: TableFile, other: TableFile) -> None:
    """Refuse two tables of different workloads (one line naming both files and the field)."""
    for field in WORKLOAD_FIELDS:
        if base.meta.get(field) != other.meta.get(field):
            raise FaceNASError(f"{other.path}: {field} is {other.meta.get(field)!r} but {base.path} has "
                               f"{base.meta.get(field)!r}; compare tables of the same workload (profile both with "
                               "the same --resolution and --batch)")


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _summary(ratios: list[float]) -> dict[str, float]:
    return {"n": len(ratios), "geomean": _geomean(ratios), "median": statistics.median(ratios),
            "min": min(ratios), "max": max(ratios)}


def compare(base: TableFile, other: TableFile) -> dict[str, Any]:
    """Per-family ratios ``other / base`` of the blocks both tables measured, and of their common networks.

    Returns:
        ``{"families": {family: {"n", "geomean", "median", "min", "max", "spearman"}}, "all": {...},
        "networks": {...} or None, "blocks": {key: ratio}}``; families in the order of
        :data:`models.naming.FAMILIES`.

    Raises:
        FaceNASError: the tables measure different workloads, or have no block in common.
    """
    check_comparable(base, other)
    common = [key for key in base.keys() if key in other.entries and not key.startswith("Zero")]
    pairs: dict[str, list[tuple[str, float, float]]] = {}
    for key in common:
        a, b = base.value(key), other.value(key)
        if a <= 0 or b <= 0:
            continue  # an analytic zero (or a broken entry) has no ratio
        pairs.setdefault(parse_block(key).family, []).append((key, a, b))
    if not pairs:
        raise FaceNASError(f"{other.path} and {base.path} have no block with a positive value in common; were they "
                           "profiled with the same --preset?")
    families: dict[str, dict[str, float]] = {}
    for family in sorted(pairs, key=lambda f: FAMILIES.index(f) if f in FAMILIES else len(FAMILIES)):
        rows = pairs[family]
        families[family] = _summary([b / a for _, a, b in rows])
        families[family]["spearman"] = spearman([a for _, a, _ in rows], [b for _, _, b in rows]) if len(rows) > 2 \
            else float("nan")
    every = [(a, b) for rows in pairs.values() for _, a, b in rows]
    overall = _summary([b / a for a, b in every])
    overall["spearman"] = spearman([a for a, _ in every], [b for _, b in every])
    nets = [(name, float(record["measured_ms"]), float(other.networks[name]["measured_ms"]))
            for name, record in base.networks.items()
            if name in other.networks and other.networks[name].get("arch") == record.get("arch")]
    networks = None
    if nets:
        networks = _summary([b / a for _, a, b in nets])
        networks["spearman"] = spearman([a for _, a, _ in nets], [b for _, _, b in nets]) if len(nets) > 2 \
            else float("nan")
    return {"families": families, "all": overall, "networks": networks,
            "blocks": {key: b / a for rows in pairs.values() for key, a, b in rows}}


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def to_markdown(base: TableFile, labels: list[str], results: list[dict[str, Any]]) -> str:
    """One table per compared table: family, blocks, geometric mean / median / min / max ratio, Spearman."""
    lines = [f"Base: {labels[0]} (`{base.path}`, {describe(base)}, batch {base.batch}, input "
             f"{base.meta.get('resolution')}). Ratio = other / base of each block's raw table value; below 1 the "
             "other is faster.", ""]
    for label, result in zip(labels[1:], results):
        lines += [f"**{label} / {labels[0]}** ({result['describe']}, `{result['path']}`)", "",
                  "| family | blocks | geometric mean | median | min | max | Spearman |",
                  "|---|---|---|---|---|---|---|"]
        rows = list(result["families"].items()) + [("all blocks", result["all"])]
        if result["networks"]:
            rows.append(("whole networks", result["networks"]))
        for name, s in rows:
            lines.append(f"| {name} | {s['n']} | {_fmt(s['geomean'])} | {_fmt(s['median'])} | {_fmt(s['min'])} | "
                         f"{_fmt(s['max'])} | {_fmt(s['spearman'])} |")
        lines.append("")
    return "\n".join(lines)


def plot(labels: list[str], results: list[dict[str, Any]], path: Path, base: TableFile) -> None:
    """Bars of the per-family geometric mean ratio, whiskers from the family's minimum to maximum."""
    from utils.figures import pyplot, save_figure

    plt = pyplot()
    families = [f for f in FAMILIES if any(f in r["families"] for r in results)] + ["networks"]
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(families) * len(results) + 2), 4.2), layout="constrained")
    for i, (label, result) in enumerate(zip(labels[1:], results)):
        xs, ys, low, high = [], [], [], []
        for j, family in enumerate(families):
            s = result["networks"] if family == "networks" else result["families"].get(family)
            if not s:
                continue
            xs.append(j + (i - (len(results) - 1) / 2) * width)
            ys.append(s["geomean"])
            low.append(max(0.0, s["geomean"] - s["min"]))  # exp(log(v)) of one block may round past v
            high.append(max(0.0, s["max"] - s["geomean"]))
        ax.bar(xs, ys, width=width * 0.95, yerr=[low, high], capsize=3, label=f"{label} / {labels[0]}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(families)), [f if f != "networks" else "whole\nnetworks" for f in families])
    ax.set_ylabel("latency ratio (other / base), geometric mean")
    ax.set_title(f"Per block family: latency in each table relative to {labels[0]}\n(whiskers: the family's fastest "
                 f"and slowest block; batch {base.batch}, input {base.meta.get('resolution')})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    save_figure(fig, path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Examples::")[1],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", required=True, metavar="TABLE",
                        help="latency tables: the first is the base, each other one is compared with it (required)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="a short name per table for the report (default: runtime and precision from each "
                             "table's metadata)")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="write PREFIX.md, PREFIX.json and PREFIX.png besides printing the tables (default: "
                             "print only)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if len(args.tables) < 2:
        raise FaceNASError("--tables needs at least two tables: the base and one to compare with it")
    if args.labels is not None and len(args.labels) != len(args.tables):
        raise FaceNASError(f"--labels gives {len(args.labels)} names for {len(args.tables)} tables")
    prefix = Path(args.out) if args.out else None
    if prefix is not None:
        for suffix in (".md", ".json", ".png"):
            check_output_file(prefix.with_name(prefix.name + suffix), "--out")
    tables = [TableFile.load(path) for path in args.tables]
    labels = args.labels or [describe(t) for t in tables]
    base = tables[0]
    results = []
    for table in tables[1:]:
        result = compare(base, table)
        result.update(path=str(table.path), describe=describe(table))
        results.append(result)
    text = to_markdown(base, labels, results)
    print(text)
    report = {"base": {"path": str(base.path), "label": labels[0], "describe": describe(base)},
              "compared": [{"label": label, **result} for label, result in zip(labels[1:], results)]}
    if prefix is not None:
        atomic_write_text(prefix.with_name(prefix.name + ".md"), text + "\n")
        atomic_write_json(prefix.with_name(prefix.name + ".json"), report)
        plot(labels, results, prefix.with_name(prefix.name + ".png"), base)
        print(f"wrote {prefix}.md, {prefix}.json and {prefix}.png")
    return report


if __name__ == "__main__":
    run_cli(main)
