"""Plot a latency table: block latency against output channels per family at each stage resolution (thesis Figs.
41-61), and optionally predicted vs measured latency from a ``tools/latency_report.py --json`` report.

One PNG per stage resolution (the block's output size: a stride-2 stage-first block is drawn at the resolution of the
stage it opens), with one panel per block family and one line per variant (kernel, expansion, stride, SE,
activation, shortcut); bars span p10..p90. ``--grid FILE`` draws every resolution in one figure instead.

Examples::

    python tools/plot_latency.py --latency-table bench/tables/rpi4_cpu.json --out-dir plots/
    python tools/plot_latency.py --latency-table t.json --grid docs/latency_rpi4_cpu.png
    python tools/plot_latency.py --report report.json --scatter docs/latency_pred_vs_meas.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latency.table_format import TableFile  # noqa: E402
from models.naming import BlockSpec, parse_block  # noqa: E402
from utils.errors import FaceNASError, run_cli  # noqa: E402
from utils.figures import pyplot, save_figure  # noqa: E402

plt = pyplot()

FAMILY_PANELS = ("MBV1", "MBV2", "BL", "KK", "KK_Mid", "DK", "Conv")
_TITLES = {"MBV1": "MBV1Conv", "MBV2": "MBConv", "BL": "BottleNeckConv", "KK": "KKConv", "KK_Mid": "KKConv_Mid",
           "DK": "DKConv", "Conv": "Conv (first/last)"}


_SHORTCUTS = {"identity": "+identity", "conv": "+1x1 conv", "conv_pool": "+pool & 1x1 conv"}
_ACTS = {"HS": "HardSwish", "RE": "ReLU"}

#: What the legend entries say, printed under every figure (the thesis nomenclature in words).
LEGEND_KEY = ("Legend: kernel size; 'stride 2' = the stage's first, downsampling block (its input width follows as "
              "'from N ch'); 'expand xN' = MBConv expansion ratio; 'bottleneck /N' = BottleNeck width divisor; "
              "SE / eSE = squeeze-excitation / effective SE; '+identity', '+1x1 conv', '+pool & 1x1 conv' = "
              "residual shortcut (the last is ResNet-D's avg-pool + 1x1 conv), none listed = no shortcut; "
              "activation LeakyReLU 0.1 unless HardSwish or ReLU is listed. Bars span p10..p90 of the samples.")


def variant_label(spec: BlockSpec) -> str:
    """Legend label of a block variant in words (everything but channels and size), e.g. ``3x3, expand x6, SE``."""
    parts = [f"{spec.kernel}x{spec.kernel}"]
    if spec.stride == 2:
        parts.append("stride 2")
    if spec.expansion:
        parts.append(f"bottleneck /{spec.expansion}" if spec.family == "BL" else f"expand x{spec.expansion}")
    if spec.se:
        parts.append({"se": "SE", "ese": "eSE"}.get(spec.se, spec.se))
    if spec.act in _ACTS:
        parts.append(_ACTS[spec.act])
    if spec.shortcut != "none":
        parts.append(_SHORTCUTS[spec.shortcut])
    return ", ".join(parts)


def series(table: TableFile, repeated_only: bool = False) -> dict[int, dict[str, dict[str, list]]]:
    """resolution (output side) -> family -> variant label -> [(cout, entry)] sorted by cout.

    ``repeated_only`` keeps the stride-1 stage blocks with equal input and output channels (a stage's repeated
    blocks, as in the thesis figures).

    For one (variant, cout) measured from several input channel counts, the most common input wins the line (the
    others are stage-first blocks from an unusual previous width).
    """
    out: dict[int, dict[str, dict[str, list]]] = {}
    for key, entry in table.entries.items():
        spec = parse_block(key)
        if spec.family in ("MaxPool", "Zero") or spec.family not in FAMILY_PANELS:
            continue
        if repeated_only and (spec.family == "Conv" or spec.stride != 1 or spec.cin != spec.cout):
            continue
        side = spec.out_size()[0]
        label = variant_label(spec) + ("" if spec.stride == 1 or spec.family == "Conv" else f", from {spec.cin} ch")
        out.setdefault(side, {}).setdefault(spec.family, {}).setdefault(label, []).append((spec.cout, entry))
    for families in out.values():
        for variants in families.values():
            for label, points in variants.items():
                variants[label] = sorted(points, key=lambda p: p[0])
    return out


def _draw_panel(ax, variants: dict[str, list[tuple[int, dict[str, Any]]]], value: str, unit: str) -> None:
    for label, points in sorted(variants.items()):
        xs = [c for c, _ in points]
        ys = [e[value] for _, e in points]
        if value == "mean_ms":
            low = [max(0.0, y - e["p10_ms"]) for y, (_, e) in zip(ys, points)]
            high = [max(0.0, e["p90_ms"] - y) for y, (_, e) in zip(ys, points)]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", ms=3, capsize=2, lw=1, label=label)
        else:
            ax.plot(xs, ys, marker="o", ms=3, lw=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("output channels")
    ax.set_ylabel(unit)
    ax.grid(True, alpha=0.3)
    if variants:
        # below the panel, never over the curves; a long list goes in two columns
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2 if len(variants) > 5 else 1,
                  frameon=False, handlelength=1.5, columnspacing=1.0)


def _add_legend_key(fig) -> None:
    import textwrap

    width = max(60, int(fig.get_figwidth() * 14))  # characters per line at fontsize 8
    fig.text(0.01, 0.0, "\n".join(textwrap.wrap(LEGEND_KEY, width)), fontsize=8, va="top", ha="left")


def plot_table(table: TableFile, out_dir: Path | None = None, grid: Path | None = None,
               repeated_only: bool = False) -> list[Path]:
    """Write the per-resolution PNGs (``out_dir``) and/or the all-in-one grid (``grid``); returns the files."""
    data = series(table, repeated_only)
    if not data:
        raise FaceNASError(f"{table.path}: no block entries to plot")
    value = "mean_ms" if table.metric == "latency" else "value"
    unit = table.unit if table.metric != "latency" else "latency (ms)"
    meta = table.meta
    where = (f"{meta.get('device_name', '')} {meta.get('device', '')}, batch {table.batch}, input "
             f"{meta.get('resolution')}, threads {meta.get('threads')}").strip()
    written = []
    sides = sorted(data, reverse=True)
    families = [f for f in FAMILY_PANELS if any(f in data[s] for s in sides)]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for side in sides:
            present = [f for f in families if f in data[side]]
            fig, axes = plt.subplots(1, len(present), figsize=(max(8.0, 3.8 * len(present)), 4.6), squeeze=False,
                                     layout="constrained")
            for ax, family in zip(axes[0], present):
                _draw_panel(ax, data[side][family], value, unit)
                ax.set_title(_TITLES[family], fontsize=9)
            fig.suptitle(f"{_what(table)} of each block against its output channels, blocks with {side}x{side} "
                         f"output\n{where}", fontsize=10)
            _add_legend_key(fig)
            path = out_dir / f"latency_{side}x{side}.png"
            save_figure(fig, path, dpi=110, tight=True)
            written.append(path)
    if grid is not None:
        fig, axes = plt.subplots(len(sides), len(families), figsize=(3.6 * len(families), 4.2 * len(sides)),
                                 squeeze=False, layout="constrained")
        for row, side in enumerate(sides):
            for col, family in enumerate(families):
                ax = axes[row][col]
                if family in data[side]:
                    _draw_panel(ax, data[side][family], value, unit)
                else:
                    ax.axis("off")
                if row == 0:
                    ax.set_title(_TITLES[family], fontsize=10)
                if col == 0:
                    ax.set_ylabel(f"{side}x{side} output\n{unit}", fontsize=10)
        fig.suptitle(f"{_what(table)} of each block against its output channels, one row per output resolution"
                     f"\n{where}", fontsize=12)
        _add_legend_key(fig)
        save_figure(fig, grid, dpi=90, tight=True)
        written.append(grid)
    return written


def _what(table: TableFile) -> str:
    return "latency" if table.metric == "latency" else f"{table.metric} ({table.unit})"


def plot_report(report_path: Path, out: Path) -> Path:
    """Predicted (raw and calibrated) vs measured backbone latency from a latency_report JSON."""
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        nets = report["networks"]
    except (OSError, ValueError, KeyError) as exc:
        raise FaceNASError(f"{report_path}: not a tools/latency_report.py --json report ({exc})") from None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = max(max(n["measured_ms"], n["predicted_raw_ms"], n["predicted_ms"]) for n in nets) * 1.08
    ax.plot([0, top], [0, top], "k-", lw=0.8)
    for factor in (0.9, 1.1):
        ax.plot([0, top], [0, top * factor], "k:", lw=0.6)
    roles = {"validate": ("o", "held-out networks"), "fit": ("x", "networks the calibration was fitted on")}
    for role, (marker, who) in roles.items():
        chosen = [n for n in nets if n["role"] == role]
        if not chosen:
            continue
        ax.scatter([n["measured_ms"] for n in chosen], [n["predicted_raw_ms"] for n in chosen], marker=marker,
                   s=18, c="tab:gray", label=f"{who}: sum of the table's block latencies")
        ax.scatter([n["measured_ms"] for n in chosen], [n["predicted_ms"] for n in chosen], marker=marker, s=18,
                   c="tab:blue", label=f"{who}: calibrated sum (x{report['scale']:.3f} "
                   f"{report.get('offset_ms', 0.0):+.2f} ms)")
    ax.plot([], [], "k:", lw=0.6, label="+-10% of the measured latency")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("measured backbone latency (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(f"predicted vs measured backbone latency\n{report.get('device_name', '')}, batch "
                 f"{report.get('batch')}, {report.get('resolution')} px", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)  # off the points
    ax.grid(True, alpha=0.3)
    save_figure(fig, out, dpi=110, tight=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     epilog=__doc__.partition("\n\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-table", metavar="TABLE", help="table to plot (latency, flops, params or acts)")
    parser.add_argument("--out-dir", type=Path, help="folder for one PNG per stage resolution (default: none)")
    parser.add_argument("--grid", type=Path, metavar="PNG", help="one PNG with every resolution (default: none)")
    parser.add_argument("--repeated-only", action="store_true",
                        help="only stride-1 blocks with equal input/output channels, as in the thesis figures "
                             "(default: every block)")
    parser.add_argument("--report", type=Path, metavar="JSON", help="a latency_report.py --json file")
    parser.add_argument("--scatter", type=Path, metavar="PNG",
                        help="predicted vs measured plot of --report (default: REPORT with .png)")
    args = parser.parse_args(argv)
    if not args.latency_table and not args.report:
        parser.error("give --latency-table and/or --report")
    written: list[Path] = []
    if args.latency_table:
        if args.out_dir is None and args.grid is None:
            args.out_dir = Path(args.latency_table).with_suffix("")
        written += plot_table(TableFile.load(args.latency_table), args.out_dir, args.grid, args.repeated_only)
    if args.report:
        written.append(plot_report(args.report, args.scatter or args.report.with_suffix(".png")))
    for path in written:
        print(path)


if __name__ == "__main__":
    run_cli(main)
