"""train.py and the engine: a short run lowers the loss, resume equals an uninterrupted run, NaN stops cleanly,
configs and loaders behave."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from engine.checkpoint import load_checkpoint, load_detector
from engine.config import config_to_argv, parse_args
from engine.loaders import ShardedSampler, split_holdout
from engine.trainer import StepSchedule
from utils.errors import FaceNASError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_wider") / "data"
    generate_dataset(root, SyntheticConfig(num_train=8, num_val=3, min_side=64, max_side=112, seed=3))
    return root


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--out-dir", str(out), "--img-size", "64", "--batch-size", "4",
            "--workers", "0", "--threads", "1", "--no-progress", "--no-eval", "--preset", "quick", *extra]


def test_short_run_lowers_the_loss_and_writes_run_files(tiny_root, tmp_path):
    out = tmp_path / "run"
    summary = train.main(_argv(tiny_root, out, "--epochs", "4", "--lr", "0.01", "--warmup-epochs", "0",
                               "--decay-epochs"))
    losses = [h["total"] for h in summary["history"]]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0], losses
    for name in ("last.pth", "train.log", "config.yaml", "loss_curve.png"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["epoch"] == 3 and ckpt["model_name"] == "facenas_mobilenetv1_025" and ckpt["arch"] is not None
    detector, _ = load_detector(out / "last.pth")
    assert not detector.training
    log = (out / "train.log").read_text()
    assert "epoch 4/4" in log and "preset quick" in log
    # The saved config repeats the run's settings.
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 4 and saved["img-size"] == 64 and saved["model"] == "mobile0.25"
    # A second fresh run into the same folder must not overwrite it.
    with pytest.raises(FaceNASError, match="--resume"):
        train.main(_argv(tiny_root, out, "--epochs", "1"))


def test_resume_continues_from_the_saved_epoch_with_identical_results(tiny_root, tmp_path):
    import shutil

    arch = tmp_path / "found_arch.json"  # an architecture file, as search.py writes
    shutil.copy(ROOT / "models" / "archs" / "r12_v3_hs.json", arch)
    common = ("--lr", "0.01", "--decay-epochs", "2", "--warmup-epochs", "0.5", "--seed", "7", "--model", str(arch),
              "--save-every", "0")
    full = train.main(_argv(tiny_root, tmp_path / "full", "--epochs", "3", *common))
    train.main(_argv(tiny_root, tmp_path / "part", "--epochs", "1", *common))
    assert load_checkpoint(tmp_path / "part" / "last.pth")["epoch"] == 0
    arch.unlink()  # the checkpoint carries the architecture
    # Resume with only the path (settings come from the checkpoint), more epochs, and a data-loading worker:
    # augmentation and order are seeded per (seed, epoch, index), so the worker count must not matter.
    resumed = train.main(["--resume", str(tmp_path / "part" / "last.pth"), "--epochs", "3", "--workers", "1",
                          "--threads", "1", "--no-progress"])
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert [h["total"] for h in resumed["history"]] == [h["total"] for h in full["history"]]
    a = load_checkpoint(tmp_path / "full" / "last.pth")
    b = load_checkpoint(tmp_path / "part" / "last.pth")
    assert b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert "resuming from" in (tmp_path / "part" / "train.log").read_text()


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train.main(_argv(tiny_root, out, "--epochs", "1"))
    before = (out / "last.pth").read_bytes()

    from models.loss import MultiBoxLoss

    original = MultiBoxLoss.forward

    def poisoned(self, predictions, targets, priors):
        losses = original(self, predictions, targets, priors)
        losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(MultiBoxLoss, "forward", poisoned)
    with pytest.raises(FaceNASError) as info:
        train.main(["--resume", str(out / "last.pth"), "--epochs", "2", "--threads", "1", "--no-progress"])
    message = str(info.value)
    assert "not finite at epoch 2 step 1" in message and str(out / "last.pth") in message
    assert "\n" not in message
    assert (out / "last.pth").read_bytes() == before
    assert "not finite" in (out / "train.log").read_text()


def test_bad_command_line_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nbatchsize: 4\n")
    proc = subprocess.run([sys.executable, "train.py", "--config", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert f"{bad}:2" in proc.stderr and "batchsize" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(FaceNASError, match="missing.pth: checkpoint not found"):
        train.main(["--resume", str(tmp_path / "missing.pth")])
    with pytest.raises(FaceNASError, match="argument --lr: expected a finite number > 0"):
        train.main(["--lr", "-1", "--out-dir", str(tmp_path / "x"), "--data-root", str(tmp_path)])


def test_help_lists_every_option_with_its_default():
    parser = train.build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in (action.help or ""), action.dest


def test_yaml_config_is_overridden_by_the_command_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nbatch-size: 4\nimg_size: 96\namp: false\ndecay-epochs: [2]\n")
    args, _ = parse_args(train.build_parser(), ["--config", str(cfg), "--epochs", "5"])
    assert (args.epochs, args.batch_size, args.img_size, args.amp, args.decay_epochs) == (5, 4, 96, False, [2])
    cfg.write_text("epochs: three\n")
    with pytest.raises(FaceNASError, match=r"c\.yaml:1: .*expected an integer"):
        config_to_argv(cfg, train.build_parser())
    cfg.write_text("- epochs\n")
    with pytest.raises(FaceNASError, match="mapping"):
        config_to_argv(cfg, train.build_parser())


def test_shipped_configs_parse():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        args, _ = parse_args(train.build_parser(), ["--config", str(path)])
        assert args.model, path


def test_recipe_defaults_depend_on_the_backbone():
    parser = train.build_parser()
    for model, batch, epochs, decay in (("mobile0.25", 32, 250, [190, 220]), ("resnet50", 24, 100, [70, 90]),
                                        ("R12_V3_HS", 32, 250, [190, 220]), ("TT3_NoSE", 24, 100, [70, 90])):
        args = train.resolve_args(parser.parse_args(["--model", model, "--preset", "recipe"]), set(), None, False)
        assert (args.batch_size, args.epochs, args.decay_epochs, args.img_size, args.lr) == \
            (batch, epochs, decay, 640, 1e-3), model
    args = train.resolve_args(parser.parse_args([]), set(), None, cuda=False)
    assert args.preset_used == "quick" and args.img_size == 320 and not args.amp
    args = train.resolve_args(parser.parse_args(["--epochs", "7"]), {"epochs"}, None, cuda=True)
    assert args.preset_used == "recipe" and args.epochs == 7 and args.amp


def test_step_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = StepSchedule(opt, 1e-3, [190, 220], 0.1, warmup_epochs=2, warmup_start=0.1)
    assert sched.lr_at(0, 0.0) == pytest.approx(1e-4)
    assert sched.lr_at(1, 0.0) == pytest.approx(1e-4 + 0.9e-3 / 2)
    assert sched.lr_at(189, 0.99) == pytest.approx(1e-3)
    assert sched.lr_at(190) == pytest.approx(1e-4)
    assert sched.lr_at(249) == pytest.approx(1e-5)
    sched.step(220)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_split_holdout_and_sharded_sampler():
    train_idx, held = split_holdout(100, 0.2, seed=1)
    assert len(held) == 20 and not set(train_idx) & set(held) and sorted(train_idx + held) == list(range(100))
    assert split_holdout(100, 0.2, seed=1) == (train_idx, held) and split_holdout(100, 0.2, seed=2) != (train_idx, held)
    with pytest.raises(FaceNASError):
        split_holdout(10, 1.0, 0)
    one = ShardedSampler(train_idx, seed=5)
    one.set_epoch(3)
    order = list(one)
    assert sorted(order) == train_idx
    shards = [ShardedSampler(train_idx, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    merged = [i for pair in zip(*(list(s) for s in shards)) for i in pair]
    assert merged == order  # two ranks together visit the same images as one process
    one.set_epoch(4)
    assert list(one) != order
    odd = [ShardedSampler(list(range(5)), shuffle=False, rank=r, world_size=2) for r in range(2)]
    assert [list(s) for s in odd] == [[0, 2, 4], [1, 3, 0]] and len(odd[1]) == 3


def test_backbone_weights_initialise_the_backbone(tmp_path):
    import timm

    classifier = timm.create_model("facenas_mobilenetv1_025")
    for p in classifier.parameters():
        p.data.fill_(0.25)
    weights = tmp_path / "mnet.pth"
    torch.save(classifier.state_dict(), weights)
    detector = train.build_model("mobile0.25", None, str(weights))
    assert all(bool((p == 0.25).all()) for p in detector.backbone.parameters())
    assert not all(bool((p == 0.25).all()) for p in detector.fpn.parameters())
    with pytest.raises(FaceNASError, match=r"mnet\.pth: .*does not (fit|match)"):
        train.build_model("R12_V3_HS", None, str(weights))
    with pytest.raises(FaceNASError, match="file not found"):
        train.build_model("mobile0.25", None, str(tmp_path / "nope.pth"))
