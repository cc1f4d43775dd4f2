"""Benchmarks of the search (not tests).

``sweep``: searches at several targets spread from half to twice a mid-range latency of the space on a given
latency table, for several expected-latency settings (formula 12 with p1 = 0.5 and 0.7, formula 11 = p1 1.0), and
reports for each derived architecture its predicted latency (goal: within 5% of the target) and its measured
end-to-end latency with the table's protocol (goal: within 10%).

``steps``: time and peak memory of a search weight step and architecture step against a plain training step of the
largest single path (goal: at most 2x the time and 1.3x the memory). Each measurement runs in a fresh process so
that peak RSS (CPU) or ``max_memory_allocated`` (CUDA) belongs to it alone.

    python bench/bench_search.py sweep --latency-table bench/tables/rpi4_cpu_320.json --space R5_V2
    python bench/bench_search.py steps --space R5_V2 --img-size 320 --batch-size 8
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"f12_p1_0.5": 0.5, "f12_p1_0.7": 0.7, "f11": 1.0}


def sweep(args: argparse.Namespace) -> None:
    import search
    from latency.internal_mode import LatencyTable
    from latency.measure import cpu_model
    from latency.predict import edge_costs, predict_latency
    from latency.runtimes import measure_table_networks
    from models.arch import Arch
    from models.search_space import get_space

    table = LatencyTable.load(args.latency_table)
    space = get_space(args.space)
    costs = edge_costs(space, table, measure_missing=True)
    mid = math.sqrt(costs.smallest * costs.largest)
    targets = [round(mid * f, 2) for f in args.factors]
    print(f"space {space.name}: reachable {costs.smallest:.2f} .. {costs.largest:.2f} ms, mid-range {mid:.2f} ms, "
          f"targets {targets}", flush=True)
    rows = []
    out_root = Path(args.out_dir)
    for config in args.configs:
        p1 = CONFIGS[config]
        for target in targets:
            out = out_root / f"{config}_T{target:g}"
            start = time.time()
            search.main(["--latency-table", args.latency_table, "--target", str(target), "--space", args.space,
                         "--p1", str(p1), "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
                         "--warmup-epochs", str(args.warmup_epochs), "--search-epochs", str(args.search_epochs),
                         "--max-steps-per-epoch", str(args.max_steps), "--arch-every", str(args.arch_every),
                         "--arch-lr", str(args.arch_lr), "--seed", str(args.seed), "--workers", "0",
                         "--out-dir", str(out), "--no-progress", "--device", "cpu"])
            arch = Arch.load(out / "arch.json")
            rows.append({"config": config, "p1": p1, "target": target, "arch": arch, "seconds": time.time() - start,
                         "predicted": predict_latency(arch, table)})
    nets = [{"arch": row["arch"]} for row in rows]
    for i, net in enumerate(nets):
        net["arch"].name = f"net{i}"
    measured = measure_table_networks([net["arch"] for net in nets], table.meta, args.repeats, args.seed)
    for net in nets:
        net.update(measured[net["arch"].name])
    print(f"\nmachine {cpu_model()}, threads {table.meta.get('threads')}, date {datetime.date.today()}, table "
          f"{args.latency_table} (batch {table.batch}, {table.input_size}x{table.input_size}, calibration "
          f"x{table.scale:g}); search {args.img_size}px, batch {args.batch_size}, {args.warmup_epochs}+"
          f"{args.search_epochs} epochs x {args.max_steps} steps, arch step every {args.arch_every}, arch lr "
          f"{args.arch_lr}\n")
    print("| expected latency | target ms | predicted ms | pred/target | measured ms | meas/target | blocks | "
          "search s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    summary: dict[str, dict[str, int]] = {}
    for row, net in zip(rows, nets):
        row["measured"] = net["measured_ms"]
        pred_gap = row["predicted"] / row["target"] - 1
        meas_gap = row["measured"] / row["target"] - 1
        stats = summary.setdefault(row["config"], {"n": 0, "pred5": 0, "meas10": 0})
        stats["n"] += 1
        stats["pred5"] += abs(pred_gap) <= 0.05
        stats["meas10"] += abs(meas_gap) <= 0.10
        blocks = sum(len(s) for s in row["arch"].stages)
        label = "formula 11" if row["p1"] == 1.0 else f"formula 12, p1={row['p1']}"
        print(f"| {label} | {row['target']:.2f} | {row['predicted']:.2f} | {1 + pred_gap:.3f} | "
              f"{row['measured']:.2f} | {1 + meas_gap:.3f} | {blocks} | {row['seconds']:.0f} |")
    print()
    for config, stats in summary.items():
        print(f"{config}: predicted within 5% of target {stats['pred5']}/{stats['n']}, measured within 10% "
              f"{stats['meas10']}/{stats['n']}")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "arch"} for r in rows], indent=2))


# ----------------------------------------------------------------------------------------------------- steps
def _largest_path(space) -> list[int]:
    """Per edge the candidate with the most FLOPs (Zero never): the largest single path."""
    from latency.analytic import block_counts
    from models.naming import format_block

    _, edges = space.placed(320)
    return [max((i for i, c in enumerate(cands) if c.family != "Zero"),
                key=lambda i, cands=cands: block_counts(format_block(cands[i]))["flops"]) for cands in edges]


def one(args: argparse.Namespace) -> None:
    """Child process: time one kind of step and print JSON with the median time and the peak memory."""
    from latency.predict import EdgeCosts
    from models.backbone import FaceNASBackbone
    from models.loss import MultiBoxLoss
    from models.retinaface import RetinaFace
    from models.search_space import get_space
    from nas.latency_loss import expected_latency, latency_loss
    from nas.supernet import SuperNet

    torch.manual_seed(0)
    device = torch.device(args.device)
    space = get_space(args.space)
    choices = _largest_path(space)
    net = SuperNet(space)
    if args.kind == "train":
        backbone = FaceNASBackbone(_arch_of(net, choices))
        channels = [backbone.feature_info[i]["num_chs"] for i in backbone.arch.fpn_indices()]
        model = RetinaFace(_Pyramid(backbone), channels).to(device)
    else:
        model = RetinaFace(net, net.channels).to(device)
    criterion = MultiBoxLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    size = args.img_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    targets = torch.zeros(args.batch_size, 2, 15, device=device)
    targets[:, 0] = torch.tensor([0.2, 0.2, 0.5, 0.6] + [0.3] * 10 + [1.0])
    targets[:, 1] = torch.tensor([0.6, 0.1, 0.9, 0.5] + [-1.0] * 10 + [-1.0])
    priors = model.priors((size, size), device)
    costs = EdgeCosts(0.0, [torch.rand(len(e.ops)) for e in net.edges])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = (torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb())
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if args.kind in ("train", "weight"):
            if args.kind == "weight":
                net.set_paths([(c, (c,)) for c in choices], "weights")
            opt.zero_grad(set_to_none=True)
            losses = criterion(model(images), targets, priors)
            losses["total"].backward()
            opt.step()
        else:  # architecture step with the largest candidate active: two-path (+ another one) or single-path (all)
            paths = [(c, (c, (c + 1) % len(e.ops)) if args.kind == "arch" else tuple(range(len(e.ops))))
                     for c, e in zip(choices, net.edges)]
            net.set_paths(paths, "arch")
            losses = criterion(model(images), targets, priors)
            total = losses["total"] + latency_loss(expected_latency(net, costs), 1.0, 1.0)
            gates = [e.gates for e in net.edges]
            grads = torch.autograd.grad(total, gates + net.arch_parameters(), allow_unused=True)
            for edge, g in zip(net.edges, grads[: len(gates)]):
                edge.accumulate_alpha_grad(g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"kind": args.kind, "ms": statistics.median(times), "peak_mb": peak, "step_mb": peak - before,
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6}))


def _rss_mb() -> float:
    """Current resident set size of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _arch_of(net, choices):
    return net.space.arch_from_choices(choices, "largest")


class _Pyramid(torch.nn.Module):
    """A FaceNASBackbone returning the three FPN inputs, as timm's features_only wrapper would."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_pyramid(x)


def steps(args: argparse.Namespace) -> None:
    results = {}
    for kind in ("train", "weight", "arch", "arch_single"):
        cmd = [sys.executable, __file__, "_one", "--kind", kind, "--space", args.space, "--img-size",
               str(args.img_size), "--batch-size", str(args.batch_size), "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results["train"]
    print(f"space {args.space}, [{args.batch_size},3,{args.img_size},{args.img_size}] on {args.device}, "
          f"date {datetime.date.today()}; median of {args.steps} steps; peak = "
          f"{'max_memory_allocated' if args.device == 'cuda' else 'process peak RSS'}\n")
    print("| step | ms | x train | peak MB | x train | step MB (peak - before) | x train | params M |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    labels = {"train": "training step, largest single path (standalone)", "weight": "search weight step (largest "
              "path in the supernet)", "arch": "search architecture step (two-path)",
              "arch_single": "search architecture step (single-path, gates over all candidates)"}
    for kind, r in results.items():
        print(f"| {labels[kind]} | {r['ms']:.1f} | {r['ms'] / base['ms']:.2f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] / base['peak_mb']:.2f} | {r['step_mb']:.0f} | {r['step_mb'] / base['step_mb']:.2f} | "
              f"{r['params_m']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="target sweep", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--latency-table", required=True, help="latency table measured on this machine (JSON)")
    s.add_argument("--space", default="R5_V2", help="search space (preset, experiment name or space file)")
    s.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.4, 2.0],
                   help="targets as multiples of the geometric mid-point of the reachable range")
    s.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                   help="expected-latency settings to compare (formula 12 with p1 0.5 / 0.7, formula 11)")
    s.add_argument("--img-size", type=int, default=160, help="search resolution")
    s.add_argument("--batch-size", type=int, default=8, help="images per weight step")
    s.add_argument("--warmup-epochs", type=int, default=1, help="warm-up epochs (weights only)")
    s.add_argument("--search-epochs", type=int, default=4, help="search epochs")
    s.add_argument("--max-steps", type=int, default=40, help="weight steps per epoch")
    s.add_argument("--arch-every", type=int, default=2, help="an architecture step every N weight steps")
    s.add_argument("--arch-lr", type=float, default=0.2, help="Adam learning rate of the alphas (search.py's CPU "
                                                              "default)")
    s.add_argument("--repeats", type=int, default=3, help="interleaved rounds when measuring each derived network")
    s.add_argument("--seed", type=int, default=0, help="seed of every search")
    s.add_argument("--out-dir", default="runs/bench_sweep", help="folder of the search runs")
    s.add_argument("--json", default=None, help="also write the rows as JSON here")
    t = sub.add_parser("steps", help="step time and memory", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for p in (t, sub.add_parser("_one", formatter_class=argparse.ArgumentDefaultsHelpFormatter)):
        p.add_argument("--space", default="R5_V2", help="search space")
        p.add_argument("--img-size", type=int, default=320, help="input resolution")
        p.add_argument("--batch-size", type=int, default=8, help="images per step")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
        p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    sub.choices["_one"].add_argument("--kind", choices=["train", "weight", "arch", "arch_single"], required=True,
                                      help="which step one child process measures (internal)")
    args = parser.parse_args()
    {"sweep": sweep, "steps": steps, "_one": one}[args.command](args)


if __name__ == "__main__":
    main()
