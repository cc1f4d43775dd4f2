"""Benchmark (TIMING: run it on a quiet machine): every registered backbone in eager PyTorch, ONNX Runtime (float32
and INT8), OpenVINO and ncnn, side by side in one run.

Each backbone (``features_only``: the three FPN inputs, deploy form with BatchNorm folded, random weights) is
exported once to a static ONNX graph ([1,3,320,320] by default) and loaded into ONNX Runtime (CPUExecutionProvider,
graph optimisation ``all``; ``onnxruntime-int8``: the graph quantized first, static QDQ with per-channel int8
weights) and OpenVINO (CPU, LATENCY hint, f32), or converted by pnnx for ncnn (fp32, light mode, packing layout),
with ``latency.runtimes.to_runtime``. For each thread count
(1 and 2 by default) all networks in all runtimes are timed in interleaved rounds
(``latency.measure.measure_interleaved``: each round visits every (network, runtime) pair in a fresh random order,
each visit is the table protocol: warm-up, samples, trimmed mean), so slow drifts of the machine hit all alike. The
result per pair is the median over rounds. Reported: milliseconds, the ratio of each runtime to eager PyTorch, their
geometric mean, and the Spearman rank correlation between runtimes over the networks (does a faster network in one
runtime stay faster in another: whether a table measured in one runtime can rank architectures for another).
With more than one thread, a runtime's worker threads keep spinning for a moment after each call (OpenMP for
PyTorch, ONNX Runtime's pool, OpenVINO's TBB); the warm-up of the next measurement absorbs that, and
``--interleave networks`` avoids it altogether at the price of less protection against drift. Run it on an
otherwise idle machine: two threads on a 2-core machine that also runs other work measure the other work.

    python bench/bench_runtimes.py                    # the full run (lead, quiet machine): 22 networks x 3 x 2
    python bench/bench_runtimes.py --names facenas_r12_v3_hs facenas_mobilenetv1_025 --size 64 --warmup 1 \\
        --samples 3 --repeats 1 --out /tmp/rt_check   # a check that the script runs (numbers meaningless)

Writes OUT.json (every round, the runtime settings, machine facts) and OUT.md (the tables).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402  (registers the facenas_* models)
from deploy.registry import RUNTIME_CHOICES  # noqa: E402
from latency.measure import cpu_model, load_average, measure_interleaved, protocol_defaults  # noqa: E402
from latency.runtimes import runtime_info, to_runtime  # noqa: E402
from models.backbone import deploy_form  # noqa: E402
from utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from utils.errors import FaceNASError, run_cli  # noqa: E402
from utils.progress import Progress  # noqa: E402

SHORT = {"torch": "torch", "onnxruntime": "ORT", "onnxruntime-int8": "ORT-int8", "openvino": "OV", "ncnn": "ncnn"}
#: What can be compared: every runtime, and ONNX Runtime with the graphs quantized to INT8 (deploy.quantize).
VARIANTS = (*RUNTIME_CHOICES, "onnxruntime-int8")


def split_variant(variant: str) -> tuple[str, str]:
    """``onnxruntime-int8`` -> ``("onnxruntime", "int8")``; a runtime alone is float32."""
    runtime, _, precision = variant.partition("-")
    return runtime, precision or "float32"


def registered_backbones() -> list[str]:
    """Every registered FaceNAS network and the ResNet-50 baseline."""
    return [name for name in timm.list_models("facenas_*") if name != "facenas_arch"] + ["resnet50"]


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (``None`` for fewer than three networks)."""
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def measure(names: list[str], runtimes: list[str], shape: tuple[int, ...], threads: int,
            eager: dict[str, torch.nn.Module], protocol: dict, repeats: int, seed: int,
            interleave: str = "all") -> dict:
    """All (network, runtime) pairs at one thread count; returns ``"name|runtime"`` -> rounds.

    ``interleave="all"`` mixes every pair in each round; ``"networks"`` runs the runtimes one after the other, each
    with its networks interleaved (no runtime's idle worker threads then overlap another runtime's measurement).
    """
    modules = {}
    for name in names:
        for runtime in runtimes:
            backend, precision = split_variant(runtime)
            modules[f"{name}|{runtime}"] = eager[name] if runtime == "torch" else \
                to_runtime(eager[name], shape, backend, threads, precision=precision)
    groups = [modules] if interleave == "all" else \
        [{key: module for key, module in modules.items() if key.endswith(f"|{runtime}")} for runtime in runtimes]
    bar = Progress(len(modules) * repeats, f"{threads} thread{'s' if threads > 1 else ''}", "measurement")
    timings: dict = {}
    try:
        for group in groups:
            timings.update(measure_interleaved(group, shape, repeats, seed, lambda: bar.update(1), device="cpu",
                                               warmup=protocol["warmup"], samples=protocol["samples"],
                                               threads=threads))
    finally:
        bar.close()
    return timings


def summarise(names: list[str], runtimes: list[str], timings: dict) -> dict:
    """Per network: ms and ratio to torch per runtime; per runtime pair: Spearman; per runtime: geometric mean."""
    rows = []
    for name in names:
        ms = {runtime: timings[f"{name}|{runtime}"]["measured_ms"] for runtime in runtimes}
        spread = {runtime: timings[f"{name}|{runtime}"]["spread"] for runtime in runtimes}
        ratio = {runtime: ms[runtime] / ms["torch"] for runtime in runtimes if "torch" in ms}
        rows.append({"name": name, "ms": ms, "spread_pct": spread, "ratio_to_torch": ratio})
    pairs = {}
    for i, first in enumerate(runtimes):
        for second in runtimes[i + 1:]:
            pairs[f"{first} vs {second}"] = spearman([r["ms"][first] for r in rows], [r["ms"][second] for r in rows])
    geo = {runtime: geometric_mean([r["ratio_to_torch"][runtime] for r in rows]) for runtime in runtimes
           if "torch" in runtimes}
    return {"rows": rows, "spearman": pairs, "geomean_ratio_to_torch": geo}


def markdown(report: dict) -> str:
    runtimes, threads = report["runtimes"], report["threads"]
    lines = [f"# Backbone latency by runtime ({report['date']})", "",
             f"{report['cpu']}; input {report['input_shape']}; deploy form (BatchNorm folded), `features_only`; "
             f"protocol warm-up {report['protocol']['warmup']}, samples {report['protocol']['samples']}, trimmed "
             f"mean; median of {report['repeats']} interleaved rounds; load average before: "
             f"{report['load_average_before']}.", ""]
    for runtime, info in report["runtime_info"].items():
        settings = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("runtime", "threads"))
        lines.append(f"* {runtime}: {settings}")
    lines.append("")
    head = ["backbone"]
    for t in threads:
        head += [f"{SHORT[r]} ms t{t}" for r in runtimes]
        head += [f"{SHORT[r]}/torch t{t}" for r in runtimes if r != "torch"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    by_threads = {t: {row["name"]: row for row in report["results"][str(t)]["rows"]} for t in threads}
    for name in report["names"]:
        cells = [name]
        for t in threads:
            row = by_threads[t][name]
            cells += [f"{row['ms'][r]:.2f}" for r in runtimes]
            cells += [f"{row['ratio_to_torch'][r]:.2f}" for r in runtimes if r != "torch"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| threads | " + " | ".join(f"geomean {SHORT[r]}/torch" for r in runtimes if r != "torch") +
              " | " + " | ".join(f"Spearman {k}" for k in report["results"][str(threads[0])]["spearman"]) + " |",
              "|---:|" + "---:|" * (len(runtimes) - 1 + len(report["results"][str(threads[0])]["spearman"]))]
    for t in threads:
        result = report["results"][str(t)]
        geo = [f"{result['geomean_ratio_to_torch'][r]:.3f}" for r in runtimes if r != "torch"]
        rho = ["-" if v is None else f"{v:.3f}" for v in result["spearman"].values()]
        lines.append(f"| {t} | " + " | ".join(geo + rho) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    defaults = protocol_defaults("cpu")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="*", default=None,
                        help="backbones (default: every registered facenas_* network and resnet50)")
    parser.add_argument("--runtimes", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help=f"runtimes (onnxruntime-int8: ONNX Runtime with every graph quantized, static QDQ); "
                             f"torch is always included (default: {' '.join(VARIANTS)})")
    parser.add_argument("--size", type=int, default=320, help="input side (default: 320)")
    parser.add_argument("--batch", type=int, default=1, help="batch (default: 1)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument("--warmup", type=int, default=defaults["warmup"],
                        help=f"untimed calls per measurement (default: {defaults['warmup']}, the CPU protocol's)")
    parser.add_argument("--samples", type=int, default=defaults["samples"],
                        help=f"timed calls per measurement (default: {defaults['samples']}, the CPU protocol's)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the round orders (default: 0)")
    parser.add_argument("--interleave", choices=("all", "networks"), default="all",
                        help="'all': every (network, runtime) pair in each round; 'networks': one runtime after the "
                             "other, networks interleaved within it (default: all)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "runtimes_cpu_320"),
                        help="writes OUT.json and OUT.md (default: bench/results/runtimes_cpu_320)")
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or args.repeats < 1 or args.samples < 1 or args.warmup < 0 or args.size < 32:
        raise FaceNASError("--threads, --repeats and --samples must be >= 1, --warmup >= 0, --size >= 32")
    runtimes = ["torch"] + [r for r in args.runtimes if r != "torch"]
    info = {runtime: runtime_info(split_variant(runtime)[0], threads=args.threads[0],
                                  precision=split_variant(runtime)[1]) for runtime in runtimes}  # fails early
    names = registered_backbones() if args.names is None else args.names
    shape = (args.batch, 3, args.size, args.size)
    torch.manual_seed(0)
    eager = {name: deploy_form(models.create_backbone(name).eval()) for name in names}
    protocol = {"warmup": args.warmup, "samples": args.samples}
    report = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "cpu": cpu_model(), "cpu_count": os.cpu_count(),
              "python": platform.python_version(), "load_average_before": load_average(),
              "input_shape": list(shape), "threads": args.threads, "runtimes": runtimes, "names": names,
              "protocol": protocol, "repeats": args.repeats, "seed": args.seed, "interleave": args.interleave,
              "runtime_info": {r: {k: v for k, v in i.items() if k != "threads"} for r, i in info.items()},
              "timings": {}, "results": {}}
    for threads in args.threads:
        timings = measure(names, runtimes, shape, threads, eager, protocol, args.repeats, args.seed,
                          args.interleave)
        report["timings"][str(threads)] = timings
        report["results"][str(threads)] = summarise(names, runtimes, timings)
    report["load_average_after"] = load_average()
    text = markdown(report)
    print(text)
    atomic_write_json(args.out + ".json", report)
    atomic_write_text(args.out + ".md", text)
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
