"""Benchmark (not a test): training-step and supernet-step throughput, side by side in one run (issue 24).

Every variant runs in its own worker process (so the reference repository's ``models``/``data`` packages do not
clash with ours, and a variant's memory or compiled code cannot slow another); the workers take turns, one step
each per round, so that a noisy shared machine slows every variant alike. Per step the worker reports forward,
loss, backward and optimizer time separately.

Variants (``--variants``; ``all`` = every one that applies):

* ``ref``: the reference RetinaFace repository's own MobileNet-0.25 model, prior box and multibox loss (biubug6/
  Pytorch_Retinaface, ``--reference-repo``), the training step of its ``train.py``; run on CPU by turning its
  hard-coded ``.cuda()`` calls into no-ops inside its worker.
* ``nchw``: ours, float32, NCHW (the path before issue 24: ``--no-channels-last``).
* ``cl``: ours, channels-last (the default now).
* ``cl_amp``: ours, channels-last + bfloat16 autocast on the CPU (``--amp``).
* ``cl_compile``: ours, channels-last + ``torch.compile`` of the model (``--compile``; compile time reported).

for RetinaFace with mobile0.25 and R12_V3_HS at ``--img-size`` (640) x ``--batch`` (8), and the supernet weight and
architecture steps of the default CPU search (space ``--space``, 320 px, batch 8) in ``nchw``, ``cl`` and
``cl_amp``. ``--profile`` adds a ``torch.profiler`` table (self CPU time per operator, grouped) per variant, and the
data pipeline (augmentation + collation) is timed alone.

    python bench/bench_step.py --reference-repo /path/to/Pytorch_Retinaface    # about 15 minutes on 2 cores

Results: ``--out`` (``bench/results/step``): ``step.json``, ``report.md``, ``phases.png``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
PHASES = ("forward", "loss", "backward", "optimizer")
DETECTOR_VARIANTS = ("ref", "nchw", "cl", "cl_amp", "cl_compile")
SUPERNET_VARIANTS = ("nchw", "cl", "cl_amp")
PROFILE_GROUPS = (("convolution backward", ("convolution_backward",)),
                  ("convolution forward", ("mkldnn_convolution", "convolution", "conv2d")),
                  ("BatchNorm backward", ("batch_norm_backward",)),
                  ("BatchNorm forward", ("batch_norm",)),
                  ("activations", ("relu", "hardswish", "hardsigmoid", "leaky", "sigmoid", "silu")),
                  ("layout copies / cat", ("copy_", "cat", "contiguous", "clone", "to_dense")),
                  ("optimizer", ("add_", "mul_", "sgd", "foreach", "lerp", "addcmul")),
                  ("loss / matching", ("sort", "topk", "nonzero", "index", "where", "smooth_l1", "cross_entropy",
                                       "log_softmax", "gather", "scatter", "max", "min", "clamp", "div", "sub")))


# ---------------------------------------------------------------------------------------------------- workers
def _batches(img_size: int, batch: int, count: int) -> list[tuple[Any, Any]]:
    from bench.bench_train import batches_in_memory
    from engine.loaders import resolve_data_root

    return batches_in_memory(Path(resolve_data_root(None, verbose=False)), img_size, batch, count)


def _reference_setup(repo: Path, img_size: int) -> tuple[Any, Any, Any, Any]:
    """The reference repository's model, optimizer, loss and priors (its own code, imported from ``repo``)."""
    import torch

    for name in [m for m in sys.modules if m.split(".")[0] in ("data", "models", "layers", "utils")]:
        del sys.modules[name]  # ours, loaded to make the batches: the reference's packages have the same names
    sys.path.insert(0, str(repo))
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its loss calls .cuda() unconditionally
    # the reference's packages, first on the path in this worker only
    cfg_mnet = importlib.import_module("data").cfg_mnet
    PriorBox = importlib.import_module("layers.functions.prior_box").PriorBox  # noqa: N806 (its class names)
    MultiBoxLoss = importlib.import_module("layers.modules").MultiBoxLoss  # noqa: N806
    RetinaFace = importlib.import_module("models.retinaface").RetinaFace  # noqa: N806

    cfg = dict(cfg_mnet, pretrain=False)
    net = RetinaFace(cfg=cfg).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    criterion = MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False)
    with torch.no_grad():
        priors = PriorBox(cfg, image_size=(img_size, img_size)).forward()
    return net, optimizer, (criterion, cfg["loc_weight"]), priors


class Worker:
    """One variant in this process: builds it, then times one step per ``step`` command."""

    def __init__(self, kind: str, variant: str, model: str, args: argparse.Namespace) -> None:
        import torch

        torch.set_num_threads(args.threads)
        self.kind, self.variant, self.args = kind, variant, args
        self.compile_s = 0.0
        self.index = 0
        torch.manual_seed(0)
        if kind == "detector" and variant == "ref":
            self.data = [(images, [t[t[:, 14] != 0] for t in targets])
                         for images, targets in _batches(args.img_size, args.batch, 2)]
            self.net, self.optimizer, self.criterion, self.priors = _reference_setup(Path(args.reference_repo),
                                                                                     args.img_size)
            return
        from engine.speed import use_channels_last
        from models.loss import MultiBoxLoss

        self.channels_last, self.amp = variant.startswith("cl"), variant.endswith("amp")
        self.criterion = MultiBoxLoss()
        if kind == "detector":
            import models

            self.data = _batches(args.img_size, args.batch, 2)
            self.net = use_channels_last(models.build_detector(model).train(), self.channels_last)
            self.optimizer = torch.optim.SGD(self.net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
            self.forward = torch.compile(self.net) if variant.endswith("compile") else self.net
        else:
            self.data = _batches(args.search_img_size, args.batch, 4)
            self.searcher = _searcher(args, self.channels_last, self.amp)
            self.net = self.searcher.detector

    def step(self) -> dict[str, float]:
        import torch

        images, targets = self.data[self.index % len(self.data)]
        self.index += 1
        if self.kind == "supernet":
            return self._supernet_step(images, targets)
        times = {}
        start = time.perf_counter()
        if self.variant == "ref":
            criterion, loc_weight = self.criterion
            out = self.net(images)
            times["forward"] = time.perf_counter() - start
            loss_l, loss_c, loss_landm = criterion(out, self.priors, targets)
            loss = loc_weight * loss_l + loss_c + loss_landm
        else:
            from engine.speed import autocast_dtype, images_in_format

            images = images_in_format(images, self.channels_last)
            with torch.autocast("cpu", dtype=autocast_dtype("cpu"), enabled=self.amp):
                out = self.forward(images)
            times["forward"] = time.perf_counter() - start
            loss = self.criterion(out, targets, self.net.priors(tuple(images.shape[-2:]), images.device))["total"]
        times["loss"] = time.perf_counter() - start - times["forward"]
        mark = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        times["backward"] = time.perf_counter() - mark
        mark = time.perf_counter()
        self.optimizer.step()
        times["optimizer"] = time.perf_counter() - mark
        times["step"] = time.perf_counter() - start
        return times

    def _supernet_step(self, images: Any, targets: Any) -> dict[str, float]:
        """``arch_every`` weight steps and one architecture step, as a search epoch interleaves them."""
        start = time.perf_counter()
        for i in range(self.args.arch_every):
            self.searcher.weight_step((images, targets), warmup=False, fraction=i / self.args.arch_every)
        weights = time.perf_counter() - start
        mark = time.perf_counter()
        self.searcher.arch_step((images, targets))
        arch = time.perf_counter() - mark
        return {"weight_step": weights / self.args.arch_every, "arch_step": arch, "step": time.perf_counter() - start}

    def profile(self) -> dict[str, Any]:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(2):
                self.step()
            wall = time.perf_counter() - started
        ops = [(e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()]
        total = sum(ms for _, ms in ops)
        groups = dict.fromkeys([name for name, _ in PROFILE_GROUPS] + ["other"], 0.0)
        for key, ms in ops:
            name = key.lower()
            group = next((g for g, words in PROFILE_GROUPS if any(w in name for w in words)), "other")
            groups[group] += ms
        top = sorted(ops, key=lambda item: -item[1])[:12]
        return {"wall_ms_per_step": 1e3 * wall / 2, "self_cpu_ms_per_step": total / 2,
                "groups_ms_per_step": {g: ms / 2 for g, ms in groups.items()},
                "top_ops_ms_per_step": [[k, ms / 2] for k, ms in top]}


def _searcher(args: argparse.Namespace, channels_last: bool, amp: bool) -> Any:
    """A Searcher with the default CPU search settings (search.py's CPU_QUICK) on the given table and space."""
    import dataclasses
    import logging
    import tempfile

    from engine.distributed import DistInfo
    from latency.internal_mode import LatencyTable
    from latency.predict import edge_costs
    from models.search_space import get_space
    from nas.searcher import Searcher, SearchSettings
    from search import CPU_QUICK

    space = get_space(args.space)
    costs = edge_costs(space, LatencyTable.load(args.table))
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    settings = {**CPU_QUICK, "target": args.target, "out_dir": tempfile.mkdtemp(), "progress": False,
                "channels_last": channels_last, "amp": amp, "max_steps_per_epoch": None}
    searcher = Searcher(space, costs, SearchSettings(**{k: v for k, v in settings.items() if k in known}),
                        DistInfo(), logging.getLogger("bench_step"))
    searcher.epoch = settings["warmup_epochs"]  # in the search phase: weight and architecture steps
    return searcher


def worker_main(args: argparse.Namespace) -> None:
    kind, variant, model = args.worker.split(":")
    started = time.perf_counter()
    worker = Worker(kind, variant, model, args)
    warm = time.perf_counter()
    worker.step()  # the first step includes one-off costs (allocations, compilation)
    first = time.perf_counter() - warm
    worker.step()
    print(json.dumps({"ready": True, "setup_s": warm - started, "first_step_s": first}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            print(json.dumps(worker.step()), flush=True)
        elif command == "profile":
            print(json.dumps(worker.profile()), flush=True)
        elif command == "quit":
            break


# ------------------------------------------------------------------------------------------------ orchestrator
class Client:
    """The orchestrator's handle on one worker process."""

    def __init__(self, name: str, spec: str, args: argparse.Namespace) -> None:
        self.name = name
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", spec, *_shared_args(args)]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} ended (status {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def _shared_args(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads), "--img-size", str(args.img_size), "--batch", str(args.batch),
            "--search-img-size", str(args.search_img_size), "--space", args.space, "--table", args.table,
            "--target", str(args.target), "--arch-every", str(args.arch_every),
            "--reference-repo", str(args.reference_repo or "")]


def run_group(names: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Start the workers of one group (one at a time, so start-up does not overlap), then interleave rounds."""
    clients = {}
    try:
        for name, spec in names.items():
            print(f"starting {name} ({spec})", flush=True)
            clients[name] = Client(name, spec, args)
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
        for round_index in range(args.rounds):
            order = list(clients) if round_index % 2 == 0 else list(reversed(clients))  # no variant always first
            for name in order:
                rows[name].append(clients[name].ask("step"))
        profiles = {name: client.ask("profile") for name, client in clients.items()} if args.profile else {}
    finally:
        for client in clients.values():
            client.close()
    out = {}
    for name, steps in rows.items():
        keys = steps[0].keys()
        out[name] = {"spec": names[name], **clients[name].info,
                     "median_s": {k: statistics.median(s[k] for s in steps) for k in keys},
                     "steps_s": [s["step"] for s in steps]}
        if name in profiles:
            out[name]["profile"] = profiles[name]
    return out


def data_pipeline(args: argparse.Namespace) -> dict[str, float]:
    """Images per second of the augmentation + collation alone (the loader's work per batch, one process)."""
    import torch

    from data.augment import TrainTransform
    from data.widerface import WiderFaceDetection, detection_collate
    from engine.loaders import resolve_data_root

    torch.set_num_threads(1)
    root = Path(resolve_data_root(None, verbose=False))
    result = {}
    for size in sorted({args.img_size, args.search_img_size}):
        dataset = WiderFaceDetection(root, "train", TrainTransform(size), seed=0)
        started = time.perf_counter()
        count = 0
        for b in range(6):
            detection_collate([dataset[(b * args.batch + i) % len(dataset)] for i in range(args.batch)])
            count += args.batch
        result[f"{size}px_images_per_s"] = count / (time.perf_counter() - started)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"# Step throughput ({result['date']}, {result['machine']}, {result['threads']} threads, load "
             f"{result['load_before']} before)", ""]
    for group, rows in result["groups"].items():
        base_name = "ref" if "ref" in rows else "nchw"
        base = rows[base_name]["median_s"]["step"]
        supernet = group.startswith("supernet")
        lines.append(f"## {group}")
        lines.append("")
        if supernet:
            lines += ["| variant | weight step (s) | arch step (s) | weight steps/s (with 1 arch step per "
                      f"{result['arch_every']}) | vs {base_name} |", "|---|---|---|---|---|"]
        else:
            lines += ["| variant | forward | loss | backward | optimizer | step (s) | images/s | vs " + base_name
                      + " | first step (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            m = row["median_s"]
            if supernet:
                rate = result["arch_every"] / m["step"]
                lines.append(f"| {name} | {m['weight_step']:.3f} | {m['arch_step']:.3f} | {rate:.2f} | "
                             f"**{base / m['step']:.2f}x** |")
            else:
                lines.append(f"| {name} | " + " | ".join(f"{m[p]:.3f}" for p in PHASES) + f" | {m['step']:.3f} | "
                             f"{result['batch'] / m['step']:.1f} | **{base / m['step']:.2f}x** | "
                             f"{row['first_step_s']:.1f} |")
        lines.append("")
        profiled = {n: r["profile"] for n, r in rows.items() if "profile" in r}
        if profiled:
            groups = list(next(iter(profiled.values()))["groups_ms_per_step"])
            lines += ["torch.profiler, self CPU time per step (ms, summed over threads):", "",
                      "| group | " + " | ".join(profiled) + " |", "|---" * (len(profiled) + 1) + "|"]
            for g in groups:
                lines.append(f"| {g} | " + " | ".join(f"{p['groups_ms_per_step'][g]:.0f}" for p in profiled.values())
                             + " |")
            lines.append("| wall per step | " + " | ".join(f"{p['wall_ms_per_step']:.0f}" for p in profiled.values())
                         + " |")
            lines.append("")
    if "data" in result:
        lines += ["Data pipeline alone (augmentation + collation, 1 process): " + ", ".join(
            f"{k.replace('_images_per_s', '')} {v:.0f} images/s" for k, v in result["data"].items()), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    from utils.figures import pyplot, save_figure

    plt = pyplot()
    groups = [g for g in result["groups"] if not g.startswith("supernet")]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        rows = result["groups"][group]
        bottom = [0.0] * len(rows)
        for phase in PHASES:
            values = [r["median_s"][phase] for r in rows.values()]
            ax.bar(list(rows), values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(f"{group}: training step by phase")
        ax.set_ylabel("median time per step (s)")
        ax.set_xlabel("variant")
    axes[0][0].legend()
    fig.suptitle(f"RetinaFace training step, batch {result['batch']}, {result['img_size']} px, "
                 f"{result['threads']} threads ({result['machine']})")
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--reference-repo", default=os.environ.get("RETINAFACE_REFERENCE", ""),
                        help="checkout of biubug6/Pytorch_Retinaface for the 'ref' variant (empty: skip it)")
    parser.add_argument("--variants", nargs="+", default=["all"],
                        help=f"detector variants among {', '.join(DETECTOR_VARIANTS)} (supernet: "
                             f"{', '.join(SUPERNET_VARIANTS)}), or all")
    parser.add_argument("--models", nargs="+", default=["mobile0.25", "R12_V3_HS"], help="detectors to time")
    parser.add_argument("--no-supernet", action="store_true", help="skip the supernet steps")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timed steps per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every worker")
    parser.add_argument("--img-size", type=int, default=640, help="training size of the detector steps")
    parser.add_argument("--batch", type=int, default=8, help="batch of every step")
    parser.add_argument("--search-img-size", type=int, default=320, help="size of the supernet steps")
    parser.add_argument("--space", default="R5_V2", help="search space of the supernet")
    parser.add_argument("--table", default=str(ROOT / "bench/results/amd_1204b/table.json"),
                        help="latency table of the supernet's latency loss")
    parser.add_argument("--target", type=float, default=20.0, help="latency target of the supernet (ms)")
    parser.add_argument("--arch-every", type=int, default=5, help="weight steps per architecture step")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.profiler table per variant")
    parser.add_argument("--out", default=str(ROOT / "bench/results/step"), help="result folder")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return 0

    from latency.measure import cpu_model, load_average
    from utils.atomic import atomic_write_json, atomic_write_text

    wanted = set(DETECTOR_VARIANTS if "all" in args.variants else args.variants)
    if not args.reference_repo:
        wanted.discard("ref")
        print("no --reference-repo: the reference variant is skipped")
    result: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": cpu_model(),
                              "threads": args.threads, "batch": args.batch, "img_size": args.img_size,
                              "arch_every": args.arch_every, "load_before": load_average(), "groups": {}}
    for model in args.models:
        names = {v: f"detector:{v}:{model}" for v in DETECTOR_VARIANTS if v in wanted
                 and (v != "ref" or model == "mobile0.25")}
        result["groups"][f"{model} {args.img_size}px"] = run_group(names, args)
    if not args.no_supernet:
        names = {v: f"supernet:{v}:-" for v in SUPERNET_VARIANTS if v in wanted or "all" in args.variants}
        result["groups"][f"supernet {args.space} {args.search_img_size}px"] = run_group(names, args)
    result["data"] = data_pipeline(args)
    result["load_after"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "step.json", result)
    text = report(result)
    atomic_write_text(out / "report.md", text + "\n")
    plot(result, out / "phases.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
