"""Latency benchmark (issue 3; not a test): profile a preset on this machine, then check the predictor.

Steps, each a plain command you can also run by hand (printed before it runs):

1. ``profile_latency.py --preset P`` into ``bench/tables/<P>_<device>_<res>.json`` (timed; a fresh table unless
   ``--resume``);
2. ``tools/latency_report.py`` on ``--random N`` networks drawn from every experiment space of the preset plus the
   published backbones, fitting the calibration on other random networks (``--fit-seed``), JSON into
   ``bench/results/``;
3. ``tools/plot_latency.py``: the block grid into ``bench/results/``, the predicted-vs-measured scatter into ``docs/``;
4. with ``--sweep``: a channel sweep of the repeated (stride-1, cin = cout) blocks of every family at the preset's
   stage resolutions (``bench/tables/sweep_<device>_<res>.json``) and its plot ``docs/latency_sweep_<device>_<res>.png``
   in the style of the thesis Figures 41-61.

On a shared machine other jobs steal the CPU in the middle of samples; run the benchmark with a raised priority
(``nice -n -15``, needs root) so that the measuring thread wins the core, and keep an eye on the load average that
the table and the report record.

Run from the repository root::

    nice -n -15 python bench/bench_latency.py           # rpi4 preset on this CPU, 1 thread
    python bench/bench_latency.py --preset dgx --device cuda --threads 1   # on a GPU machine (batch 8, 640)
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RPI4_MODELS = ["R5", "R5_V2", "R5_V3", "R5_V2_HS", "R5_V3_HS", "R11_V2", "R11_V3", "R11_V2_HS", "R11_V3_HS",
               "R12_V2", "R12_V3", "R12_V2_HS", "R12_V3_HS", "J15_HS", "mobilenetv1_0.25"]
DGX_MODELS = ["TT3", "TT3_SE", "TT3_NoSE", "R11_V2_HS", "J15_HS", "mobilenetv1_0.25"]


def run(command: list[str]) -> float:
    """Run a command from the repository root, echoing it; returns its wall time in seconds."""
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="rpi4", choices=("rpi4", "dgx", "jetson"), help="preset to profile")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to profile")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 on a shared machine: multi-threaded timings collapse when another "
                             "process takes a core)")
    parser.add_argument("--random", type=int, default=30, help="random validation networks")
    parser.add_argument("--fit-random", type=int, default=20, help="random networks to fit the calibration on")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per network")
    parser.add_argument("--rounds", type=int, default=3,
                        help="profiling passes over the block list (median round kept per block)")
    parser.add_argument("--calibration", default="affine", choices=("median", "lsq", "affine"),
                        help="calibration stored in the table (the report compares all three on the validation set)")
    parser.add_argument("--resume", action="store_true", help="keep an existing table and only add what is missing")
    parser.add_argument("--skip-profile", action="store_true", help="use the existing table as it is")
    parser.add_argument("--skip-report", action="store_true", help="no end-to-end report")
    parser.add_argument("--sweep", action="store_true", help="also profile and plot the channel sweep")
    args = parser.parse_args()

    from models.search_space import PRESETS

    res = PRESETS[args.preset]["latency_size"]
    stem = f"{args.preset}_{args.device}_{res}"
    table = ROOT / "bench" / "tables" / f"{stem}.json"
    report = ROOT / "bench" / "results" / f"latency_report_{stem}.json"
    timings = {}
    if not args.skip_profile:
        if table.exists() and not args.resume:
            table.unlink()
            table.with_suffix(".log").unlink(missing_ok=True)
        timings["profile_s"] = run([sys.executable, "profile_latency.py", "--preset", args.preset, "--device",
                                    args.device, "--threads", str(args.threads), "--rounds", str(args.rounds),
                                    "--out", str(table)])
    if not args.skip_report:
        models = RPI4_MODELS if args.preset != "dgx" else DGX_MODELS
        timings["report_s"] = run([sys.executable, "tools/latency_report.py", "--latency-table", str(table),
                                   "--random", str(args.random), "--seed", "0", "--space", "all", "--fit-calibration",
                                   "--fit-random", str(args.fit_random), "--fit-seed", "1000", "--calibration",
                                   args.calibration, "--repeats", str(args.repeats), "--models", *models, "--json",
                                   str(report)])
        run([sys.executable, "tools/plot_latency.py", "--latency-table", str(table), "--grid",
             str(ROOT / "bench" / "results" / f"latency_blocks_{stem}.png"), "--report", str(report), "--scatter",
             str(ROOT / "docs" / f"latency_pred_vs_meas_{stem}.png")])
    if args.sweep:
        sweep = ROOT / "bench" / "tables" / f"sweep_{args.device}_{res}.json"
        names = sweep.with_name(sweep.stem + "_keys.txt")
        channels = ",".join(str(c) for c in (16, 32, 64, 96, 128, 192, 256))
        listing = subprocess.run([sys.executable, "profile_latency.py", "--families", "MBV1", "MBV2", "BL", "KK", "DK",
                                  "--kernels", "3", "5", "--channels", *[channels] * 4, "--resolution", str(res),
                                  "--max-channel-ratio", "1", "--list-names"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.split()
        # the repeated blocks of each stage: stride 1 and as many channels in as out (stage-first forms dropped)
        names.write_text("".join(k + "\n" for k in listing if not k.startswith(("#", "S_"))), encoding="utf-8")
        timings["sweep_s"] = run([sys.executable, "profile_latency.py", "--names-file", str(names), "--resolution",
                                  str(res), "--device", args.device, "--threads", str(args.threads), "--max-ms", "100",
                                  "--quiet", "--out", str(sweep)])
        run([sys.executable, "tools/plot_latency.py", "--latency-table", str(sweep), "--repeated-only", "--grid",
             str(ROOT / "docs" / f"latency_sweep_{args.device}_{res}.png")])
    summary: dict = {"table": str(table.relative_to(ROOT)), "entries": len(json.loads(table.read_text())["entries"]),
                     **timings}
    if report.exists():
        data = json.loads(report.read_text())
        summary.update(scale=data["scale"], offset_ms=data["offset_ms"], retest_spearman=data["retest_spearman"],
                       method_comparison=data["method_comparison"], summary=data["summary"])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
