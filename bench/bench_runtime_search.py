"""A search for a runtime, end to end (issue 11; a benchmark, not a test): table in ONNX Runtime -> search ->
export.py -> the exported file timed in ONNX Runtime against the target (also INT8 and ncnn tables, issue 23).

1. ``search.py`` with the given ONNX Runtime table (``profile_latency.py --runtime onnxruntime``), default CPU
   budget and the budgeted derive;
2. ``export.py --model OUT/arch.json --what backbone --static --size S S`` (the deploy form, checked against PyTorch);
3. the exported ``.onnx`` file itself loaded into ONNX Runtime with the table's settings (provider, optimisation
   level, threads) and timed with the table's protocol, in interleaved rounds with a few of the table's own
   networks (to show how far the machine drifted since profiling); then measured latency against the target.

An INT8 table (``--precision int8``) exports with ``export.py --int8`` (calibrated on the built-in images) and times
that quantized file; its own networks are quantized as the profiler did. An ncnn table converts the backbone with
pnnx, the converter ``export.py --format ncnn`` uses (which writes detectors only). ``--arch`` times the result of a
search already run instead of running one.

    python bench/bench_runtime_search.py --table bench/tables/rpi4_ort_320.json --space R5_V2 --target 5
    python bench/bench_runtime_search.py --table rpi4_ort_int8.json --target 7.36 --arch runs/int8_search/arch.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latency.drift import machine_drift, stored_networks  # noqa: E402
from latency.internal_mode import LatencyTable  # noqa: E402
from latency.measure import cpu_model, deploy_backbone, load_average, measure_interleaved  # noqa: E402
from latency.runtimes import build_runtime_module, table_precision, table_runtime, to_runtime  # noqa: E402
from models.arch import Arch  # noqa: E402
from utils.atomic import atomic_write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", type=Path, required=True, help="an ONNX Runtime (or OpenVINO) latency table")
    parser.add_argument("--space", default="R5_V2", help="search space")
    parser.add_argument("--target", type=float, required=True, help="target backbone latency (ms)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "runtime_search",
                        help="work folder")
    parser.add_argument("--arch", type=Path, default=None,
                        help="the arch.json of a search already run on --table (default: run the search)")
    args = parser.parse_args()
    table = LatencyTable.load(args.table)
    runtime, provider, level = table_runtime(table.meta)
    precision = table_precision(table.meta)
    out = args.out / f"{args.space}_T{args.target:g}"
    out.mkdir(parents=True, exist_ok=True)
    arch_file = args.arch if args.arch is not None else out / "arch.json"
    if not arch_file.is_file():
        subprocess.run([sys.executable, "search.py", "--latency-table", str(args.table), "--target", f"{args.target:g}",
                        "--space", args.space, "--out-dir", str(out), "--no-progress"], cwd=ROOT, check=True)
    side = table.input_size
    shape = (table.batch, 3, side, side)
    arch = Arch.load(arch_file)
    threads = int(table.meta["threads"])
    if runtime == "ncnn":
        modules = {"exported": to_runtime(deploy_backbone(arch), shape, runtime, threads)}
    else:
        onnx_file = out / ("backbone_int8.onnx" if precision == "int8" else "backbone.onnx")
        if not onnx_file.is_file():
            subprocess.run([sys.executable, "export.py", "--model", str(arch_file), "--what", "backbone", "--static",
                            "--size", str(side), str(side), "--out", str(onnx_file)]
                           + (["--int8"] if precision == "int8" else []), cwd=ROOT, check=True)
        # the file as written (already quantized for an INT8 table): no second quantization here
        modules = {"exported": build_runtime_module(onnx_file.read_bytes(), runtime, threads, provider, level)}
    stored = stored_networks(table, 6)  # the table's own networks, for the drift since profiling
    for stored_arch, _, _ in stored:
        modules[stored_arch.name] = to_runtime(deploy_backbone(stored_arch), shape, runtime, threads, provider, level,
                                               precision=precision)
    protocol = table.meta["protocol"]
    start, load = time.time(), load_average()
    results = measure_interleaved(modules, shape, args.repeats, 0, None,
                                  estimator=table.estimator, device="cpu", warmup=protocol["warmup"],
                                  samples=protocol["samples"], threads=threads, trim=protocol["trim"])
    drift = (machine_drift(stored, results) or {"drift": 0.0})["drift"]  # 0 for a table without stored networks
    measured = results["exported"]["measured_ms"]
    budget = arch.meta["derive"]["budget"]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(), "table": str(args.table),
              "runtime": runtime, "precision": precision, "arch": str(arch_file), "provider": provider, "level": level,
              "threads": threads, "space": args.space,
              "target": args.target, "predicted": budget["predicted"], "status": budget["status"],
              "measured_exported": measured, "spread": results["exported"]["spread"], "drift": drift,
              "load": [load, load_average()], "seconds": time.time() - start}
    atomic_write_json(out / "report.json", report)
    print(json.dumps(report, indent=1))
    print(f"{args.space} target {args.target:g} ms in {runtime} {precision}: predicted {budget['predicted']:.3f} ms "
          f"({100 * (budget['predicted'] / args.target - 1):+.1f}%), the exported file measured {measured:.3f} ms "
          f"({100 * (measured / args.target - 1):+.1f}%; spread {results['exported']['spread']:.1f}%); the table's own "
          f"networks ran {100 * drift:+.1f}% against their stored latency")


if __name__ == "__main__":
    main()
