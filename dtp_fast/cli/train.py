"""``dtp-fast train``, ``demo`` and ``info``: train a preset, compare L-DRL with backprop, show the setup."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..feedback.budget import AdaptiveBudget
from .common import Command, CommandError, add_device, parse_set

__all__ = ["TRAIN", "DEMO", "INFO"]


def _per_layer_list(cast, what):
    def parse(text: str):
        """``1,2,3`` (one per layer, or one for all) or ``conv_3=0.01,fc=0.2`` (some layers by name)."""
        parts = [v.strip() for v in text.split(",") if v.strip()]
        try:
            if any("=" in v for v in parts):
                pairs = [v.split("=", 1) for v in parts]
                return {name.strip(): cast(val) for name, val in pairs}
            return [cast(v) for v in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, or layer=value pairs, got {text!r}") from None
    return parse


_int_list = _per_layer_list(int, "integers")
_float_list = _per_layer_list(float, "numbers")


def _load_config(path: str) -> dict:
    """Settings from a JSON or YAML file (YAML needs PyYAML)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{p} is YAML: install PyYAML (pip install pyyaml) or give a JSON file") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {p} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a mapping of setting names to values")
    misplaced = sorted(k for k in data if k.replace("-", "_") in ("out", "resume", "config"))
    if misplaced:
        raise ValueError(f"config file {p} sets {', '.join(misplaced)}, which only the command line gives: remove "
                         f"{'it' if len(misplaced) == 1 else 'them'} and pass --out / --resume instead")
    return data


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--preset", default=None,
                   help="a network with default settings per data set (simple_vgg, the default; lenet; mlp) or "
                        "a paper experiment that also fixes the data set and algorithm (cifar10-vgg-ldrl, "
                        "cifar10-vgg-bp, imagenet32-vgg-ldrl, imagenet32-vgg-bp, cifar10-lenet-ldrl); "
                        "`--list-presets` shows them all")
    g.add_argument("--list-presets", action="store_true", help="list the presets and their settings, then exit")
    g.add_argument("--dataset", default=None,
                   help="digits (embedded, no download; the default for network presets), cifar10 or imagenet32 "
                        "(both need --data)")
    g.add_argument("--data", default=None,
                   help="where the data set lives: for cifar10 the cifar-10-batches-py folder, an ImageFolder "
                        "tree (train/<class>/*.jpg, test/<class>/...) or a .tar.gz of one; for imagenet32 the "
                        "folder of train_data_batch_1..10.npz and val_data.npz (or its parent); "
                        "default: $DTP_FAST_DATA")
    g.add_argument("--algo", choices=["ldrl", "bp", "parallel", "dtp", "tp", "drl"], default=None,
                   help="ldrl: DTP with L-DRL feedback training (default); bp: backprop baseline; parallel: "
                        "L-DRL with one iteration and many noise samples per batch; dtp: vanilla DTP (Lee et al. "
                        "2015, reconstruction loss); tp: target propagation; drl: direct linear feedback trained "
                        "with the difference reconstruction loss (Meulemans et al. 2020)")
    g.add_argument("--channels", type=_int_list, default=None,
                   help="conv channels per block, comma-separated (simple_vgg, lenet)")
    g.add_argument("--hidden", type=_int_list, default=None, help="hidden widths, comma-separated (mlp)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=None, help="number of epochs")
    g.add_argument("--batch-size", type=int, default=None, help="training batch size")
    g.add_argument("--limit-batches", type=int, default=None,
                   help="train on at most this many batches per epoch (quick checks)")
    g.add_argument("--lr", type=float, default=None, help="forward SGD learning rate")
    g.add_argument("--momentum", type=float, default=None, help="forward SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None, help="forward SGD weight decay")
    g.add_argument("--t-max", type=int, default=None,
                   help="period of the cosine learning-rate schedule in epochs (default: --epochs)")
    g.add_argument("--eta-min", type=float, default=None, help="final learning rate of the cosine schedule")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random flip + edge-padded crop of the training images (default: on for cifar10)")

    g = p.add_argument_group("DTP / L-DRL (per-layer values: one per trained feedback layer, comma-separated; "
                             "one for all; or some layers by name, e.g. conv_3=0.01,fc=0.2)")
    g.add_argument("--beta", type=float, default=None, help="step size of the first target")
    g.add_argument("--feedback-iters", type=_int_list, default=None, help="feedback SGD steps per batch, per layer")
    g.add_argument("--feedback-lr", type=_float_list, default=None, help="feedback SGD learning rate, per layer")
    g.add_argument("--noise", type=_float_list, default=None, help="L-DRL noise sigma, per layer")
    g.add_argument("--feedback-momentum", type=float, default=None, help="feedback SGD momentum (default 0.9)")
    g.add_argument("--feedback-samples", type=int, default=None, help="noise samples per feedback iteration")
    g.add_argument("--feedback-budget", choices=["paper", "adaptive"], default=None,
                   help="paper: every layer's --feedback-iters on every batch (default); adaptive: after a "
                        "warm-up, each layer's iterations in proportion to how far its forward weights move "
                        "per batch (against the fastest so far), divided by --budget-lr-scale at that much "
                        "higher a feedback lr (knobs: --budget-*)")
    g.add_argument("--budget-floor", type=float, default=None,
                   help=f"adaptive: smallest share of a layer's iterations the drift rule gives it (default "
                        f"{AdaptiveBudget.floor})")
    g.add_argument("--budget-lr-scale", type=float, default=None,
                   help=f"adaptive: after the warm-up, iterations divided and the feedback lr multiplied by "
                        f"this (default {AdaptiveBudget.lr_scale})")
    g.add_argument("--budget-warmup", type=int, default=None,
                   help=f"adaptive: batches at the full budget first (default {AdaptiveBudget.warmup})")
    g.add_argument("--backend", default=None,
                   help="feedback backend: auto (fastest usable), reference, torch, ... (`dtp-fast info` lists "
                        "the usable ones)")
    g.add_argument("--feedback-memory", type=float, default=None, metavar="MIB",
                   help="memory (MiB) the fast backends may use for perturbations precomputed for many "
                        "iterations at once (default: a quarter of the memory available rounded down to a power of "
                        "two, at most 8 GiB, and "
                        "never less than one iteration of every layer needs)")

    g = p.add_argument_group("settings from elsewhere")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="settings from a JSON or YAML file; the reference implementation's names "
                        "(feedback_training_iterations, b_optim.lr, f_optim.lr, ...) are accepted; flags override it")
    g.add_argument("--set", action="append", type=parse_set, default=[], metavar="KEY=VALUE",
                   help="any other setting, VALUE parsed as JSON when it can be, a comma-separated list of "
                        "numbers as a list, else as a string (e.g. --set t_max=85 "
                        "--set 'feedback_iters=[20,30,35,55,20]' --set b_optim.momentum=0.9); repeatable")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="also log metrics to OUT/tensorboard (needs the tensorboard package)")

    g = p.add_argument_group("run")
    add_device(g, default=None)
    g.add_argument("--dtype", choices=["float32", "float64"], default=None, help="floating-point type")
    g.add_argument("--seed", type=int, default=None, help="seed for initialisation, data order and noise")
    g.add_argument("--out", default=None,
                   help="output folder for metrics.jsonl, summary.json and checkpoint.pt "
                        "(default runs/<preset>-<dataset>-<algo>-seed<seed>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (settings come from that run's "
                        "config.json unless given again)")
    g.add_argument("--no-diagnostics", dest="diagnostics", action="store_false", default=None,
                   help="skip the alignment angles after each epoch")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar or per-epoch lines")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")


_RUN_KEYS = ("preset", "dataset", "data")
_SETTING_KEYS = ("algo", "channels", "hidden", "epochs", "batch_size", "limit_batches", "lr", "momentum",
                 "weight_decay", "t_max", "eta_min", "augment", "beta", "feedback_iters", "feedback_lr", "noise",
                 "feedback_momentum", "feedback_samples", "feedback_budget", "budget_floor", "budget_lr_scale",
                 "budget_warmup", "feedback_memory", "tensorboard", "backend", "device", "dtype",
                 "seed", "diagnostics", "progress")


def _list_presets() -> None:
    from ..presets import PRESETS, RECIPES
    print("Paper experiments (network, data set, algorithm and every setting):")
    for r in RECIPES.values():
        print(f"  {r.name}: {r.description}")
        print("    " + ", ".join(f"{k}={v}" for k, v in r.settings.items()))
    print("Networks (defaults per data set; the first is used for other data sets):")
    for p in PRESETS.values():
        print(f"  {p.name}: {p.description}")
        for ds, s in p.settings.items():
            print(f"    {ds}: " + ", ".join(f"{k}={v}" for k, v in s.items()))


def cmd_train(args) -> int:
    from ..api import make_run
    from ..trainer import CHECKPOINT_NAME
    from ..presets import normalize_settings, resolve_preset
    from ..utils import atomic_write_json

    if args.list_presets:
        _list_presets()
        return 0
    given = normalize_settings(_load_config(args.config)) if args.config else {}
    given.update(normalize_settings(dict(args.set)))
    given.update({k: getattr(args, k) for k in _RUN_KEYS + _SETTING_KEYS if getattr(args, k) is not None})
    if args.resume:
        if args.out is None:
            raise CommandError("--resume needs --out, the folder of the run to continue", exit_code=1)
        saved = Path(args.out) / "config.json"
        if saved.exists():
            try:
                recorded = json.loads(saved.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"cannot resume: {saved} is not valid JSON ({err}); restore it or delete it "
                                 f"and give the run's settings again") from None
            if not isinstance(recorded, dict):
                raise ValueError(f"cannot resume: {saved} must hold the run's settings as a mapping, not a "
                                 f"{type(recorded).__name__}")
            given = {**recorded, **given}
    preset, data = given.pop("preset", "simple_vgg"), given.pop("data", None)
    _, dataset, defaults = resolve_preset(preset, given.pop("dataset", None))
    algo, seed = given.get("algo", defaults.get("algo", "ldrl")), given.get("seed", defaults.get("seed", 0))
    out = Path(args.out or f"runs/{preset}-{dataset}-{algo}-seed{seed}")
    saved = {k: v for k, v in given.items() if k != "progress"}
    trainer = make_run(preset, dataset, data, out=out, resume=args.resume, **given)  # joins torchrun's group
    dist = trainer.dist
    fresh = not out.exists()
    if dist.is_main:
        atomic_write_json({"preset": preset, "dataset": dataset, "data": data} | saved, out / "config.json")
    try:
        summary = trainer.fit()
    except BaseException:
        if dist.is_main and not args.resume and not (out / CHECKPOINT_NAME).exists():
            _remove_failed_start(out, fresh)
        raise
    if not dist.is_main:
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, out)
    return 0


def _remove_failed_start(out: Path, fresh: bool) -> None:
    """A new run that stopped before its first checkpoint leaves nothing behind: its config.json and metrics
    go, and the folder too if this run made it and it is empty now."""
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        (out / name).unlink(missing_ok=True)
    if fresh and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _print_summary(s: dict, out) -> None:
    top5 = f", top-5 {s['test_top5']:.4f}" if s.get("test_top5") is not None else ""
    print(f"{s['algo']} on {s['dataset']} ({s.get('preset')}, backend {s['backend']}, {s['device']}): "
          f"test accuracy {s['test_accuracy']:.4f}{top5} after {s['epochs']} epochs; "
          f"{s['images_per_second']:.0f} img/s, feedback {s['feedback_seconds']:.1f} s, "
          f"forward {s['forward_seconds']:.1f} s")
    share = (s.get("feedback_iterations") or {}).get("share_of_configured")
    if share is not None:
        print(f"  feedback iterations: {s['feedback_iterations']['total']}, {100 * share:.0f}% of "
              f"--feedback-iters on every batch ({(s.get('config') or {}).get('feedback_budget', 'paper')} budget)")
    for name, a in s.get("alignment", {}).items():
        print(f"  {name}: angle(G, F^T) {a['angle_deg']:.1f} deg, distance {a['distance']:.3f}")
    print(f"  written to {out}/ (summary.json, metrics.jsonl, checkpoint.pt)")


def cmd_demo(args) -> int:
    """L-DRL and backprop side by side on the embedded digits, same network and trainer."""
    from ..api import train

    out = Path(args.out)
    results = {}
    for algo in ("ldrl", "bp"):
        run_dir = out / algo
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"== {algo}: preset {args.preset} on digits ==", flush=True)
        results[algo] = train(args.preset, "digits", algo=algo, out=run_dir, seed=args.seed, epochs=args.epochs,
                              backend=args.backend, device=args.device, progress=not args.quiet)
    print()
    print(f"{'algo':<6} {'test acc':>9} {'epochs':>7} {'img/s':>8} {'feedback s':>11} {'forward s':>10}")
    for algo, s in results.items():
        print(f"{algo:<6} {s['test_accuracy']:>9.4f} {s['epochs']:>7} {s['images_per_second']:>8.0f} "
              f"{s['feedback_seconds']:>11.1f} {s['forward_seconds']:>10.1f}")
    gap = results["bp"]["test_accuracy"] - results["ldrl"]["test_accuracy"]
    print(f"L-DRL {100 * results['ldrl']['test_accuracy']:.2f}% vs backprop "
          f"{100 * results['bp']['test_accuracy']:.2f}% (gap {100 * gap:+.2f} points); runs in {out}/")
    return 0


def cmd_info(args) -> int:
    import torch

    from .. import _ext
    from ..feedback import auto_memory_budget, available_backends
    from ..feedback.memory import CPU_AUTO_ITERATIONS, CPU_CHUNK_BYTES
    from ..utils import settings_from_environment, versions

    devices = ["cpu"] + ([f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    info = {
        "versions": versions(),
        "devices": {d: (torch.cuda.get_device_name(d) if d.startswith("cuda") else "cpu") for d in devices},
        "compiled_extension": {"available": _ext.available(), "reason": _ext.load_error(),
                               "build": _ext.build_info()},
        "backends": {d: {name: {"usable": ok, "note": why} for name, (ok, why) in available_backends(d).items()}
                     for d in devices},
        "feedback_memory_mib": {d: dict(zip(("auto_budget", "available"),
                                            (round(b / 2**20, 1) for b in auto_memory_budget(d))))
                                for d in devices},
        "environment": settings_from_environment(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info["versions"].items():
        print(f"{k:>10}: {v}")
    print(f"{'devices':>10}: " + ", ".join(f"{d} ({n})" for d, n in info["devices"].items()))
    ext = info["compiled_extension"]
    print(f"{'dtp_fast._C':>10}: " + (f"built ({json.dumps(ext['build'])})" if ext["available"]
                                       else f"not usable: {ext['reason']}"))
    for d, backends in info["backends"].items():
        for name, b in backends.items():
            print(f"  backend {name:<10} on {d:<7}: {'usable' if b['usable'] else 'NOT usable'} ({b['note']})")
    for d, m in info["feedback_memory_mib"].items():
        what = (f"{m['auto_budget']:.0f} MiB" if d != "cpu" else
                f"chunks of at least {CPU_AUTO_ITERATIONS} iterations and about {CPU_CHUNK_BYTES >> 20} MiB of "
                f"work per layer, at most {m['auto_budget']:.0f} MiB,")
        print(f"  feedback memory on {d:<7}: {what} by default (--feedback-memory), "
              f"of {m['available']:.0f} MiB available")
    env = info["environment"]
    print(f"{'settings':>10}: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                                   "no DTP_FAST_* or OMP_NUM_THREADS variable set"))
    return 0


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="simple_vgg", help="network preset (default simple_vgg)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--backend", default="auto", help="feedback backend (default auto)")
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", default="runs/demo", help="output folder; its ldrl/ and bp/ are replaced")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print as JSON")


TRAIN = Command(
    "train", help="train a preset network with L-DRL or backprop",
    description="Train a preset network with DTP/L-DRL or the backprop baseline. Settings default to the "
                "preset's for the data set; any flag overrides them.",
    add_arguments=_add_train_args, run=cmd_train)
DEMO = Command(
    "demo", help="L-DRL and backprop side by side on the embedded digits",
    description="Train the same network with L-DRL and with backprop on the embedded handwritten digits and "
                "print both accuracies.",
    add_arguments=_add_demo_args, run=cmd_demo)
INFO = Command(
    "info", help="versions, devices, compiled kernels and usable backends",
    description="Show versions, devices, whether the compiled extension is usable, and which feedback backends "
                "can run on each device (and why not).",
    add_arguments=_add_info_args, run=cmd_info)
