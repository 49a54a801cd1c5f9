"""Feedback budget policies on the embedded digits default (issue 16): accuracy against the share of
the paper's feedback iterations, over seeds.

    python benchmarks/budget_sweep.py                          # the policies below, seeds 0,1,2, ~3 min
    python benchmarks/budget_sweep.py --preset lenet           # another network of the digits presets
    python benchmarks/budget_sweep.py --seeds 0 --epochs 1     # smoke run

Each policy trains ``dtp-fast train --algo ldrl`` (a network preset on digits, the preset's settings,
SimpleVGG by default) once per seed, one after the other on one CPU thread. Writes
``<out>/<machine>-<date>-budget-digits[-<preset>].json`` and ``.md`` (``<machine>``: the CPU's name and
cores, lower case, dashes): per run the test accuracy (or the epoch where the loss became NaN/inf), the
feedback iterations spent as a share of the paper's (total and per layer), the final weight alignment and
the training seconds; per policy the mean and sample std over the seeds and the number of seeds that
diverged.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dtp_fast.api import make_run  # noqa: E402
from dtp_fast.trainer import NonFiniteLossError  # noqa: E402
from dtp_fast.utils import machine_name, origin  # noqa: E402

# name -> settings on top of the preset's; "adaptive" is the policy's defaults
POLICIES = {
    "paper": {},
    "adaptive": {"feedback_budget": "adaptive"},
    "adaptive-drift-only": {"feedback_budget": "adaptive", "budget_lr_scale": 1.0},
    "adaptive-lr-scale-1.5": {"feedback_budget": "adaptive", "budget_lr_scale": 1.5},
    "adaptive-lr-scale-3": {"feedback_budget": "adaptive", "budget_lr_scale": 3.0},
}


def run_one(settings: dict, seed: int, epochs: int | None, preset: str = "simple_vgg") -> dict:
    extra = {"epochs": epochs} if epochs else {}
    trainer = make_run(preset, "digits", None, algo="ldrl", seed=seed, progress=False, **settings, **extra)
    paper = {name: hp.iterations for name, hp in zip(trainer.net.feedback_names, trainer.fb_hparams)}
    out = {"seed": seed}
    try:
        summary = trainer.fit()
    except NonFiniteLossError as err:
        out.update(diverged=True, error=str(err).split(";")[0], epoch=trainer.epoch + 1)
        spent = {k: v for k, v in trainer.totals.get("feedback_iterations", {}).items()}
        steps = trainer.step
    else:
        out.update(diverged=False, test_accuracy=summary["test_accuracy"], train_seconds=summary["train_seconds"],
                   alignment={k: v["angle_deg"] for k, v in summary["alignment"].items()})
        spent, steps = summary["feedback_iterations"]["per_layer"], summary["steps"]
    out["share"] = sum(spent.values()) / (steps * sum(paper.values())) if steps else None
    out["share_per_layer"] = {k: spent.get(k, 0) / (steps * n) for k, n in paper.items()} if steps else None
    return out


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def to_markdown(report: dict) -> str:
    o = report["origin"]
    epochs = report["epochs"] or "the preset's"
    lines = [f"# Feedback budget policies on digits ({o['machine']}, {o['date']}, commit {o['commit']})", "",
             f"`{o['command']}`", "",
             f"Preset {report['preset']} on the embedded digits, the preset's settings ({epochs} epochs), "
             f"seeds {report['seeds']}. Accuracy: test top-1 of the "
             "seeds that finished, mean ± sample std; share: feedback iterations spent over the paper's "
             "(diverged runs up to where they stopped).", "",
             "| policy | settings | test top-1 (%) | share of paper iterations | per layer | diverged |",
             "|---|---|---|---|---|---|"]
    for p in report["policies"]:
        acc, share = p["test_accuracy"], p["share"]
        layers = ", ".join(f"{k} {100 * v['mean']:.0f}%" for k, v in p["share_per_layer"].items())
        lines.append(f"| {p['name']} | `{json.dumps(p['settings'])}` | "
                     + (f"{100 * acc['mean']:.2f}" + (f" ± {100 * acc['std']:.2f}" if acc['std'] is not None else "")
                        if acc else "-")
                     + f" | {100 * share['mean']:.1f}% | {layers} | {p['diverged']} of {len(p['runs'])} |")
    lines += ["", "## Runs", "", "| policy | seed | test top-1 (%) | share | final angles (deg) | seconds |",
              "|---|---|---|---|---|---|"]
    for p in report["policies"]:
        for r in p["runs"]:
            acc = f"{100 * r['test_accuracy']:.2f}" if not r["diverged"] else f"diverged (epoch {r['epoch']})"
            angles = ", ".join(f"{k} {v:.1f}" for k, v in (r.get("alignment") or {}).items())
            secs = f"{r['train_seconds']:.0f}" if not r["diverged"] else "-"
            lines.append(f"| {p['name']} | {r['seed']} | {acc} | {100 * r['share']:.1f}% | {angles or '-'} | {secs} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the preset's)")
    ap.add_argument("--preset", default="simple_vgg", choices=["simple_vgg", "lenet", "mlp"],
                    help="network preset (default simple_vgg: the digits default)")
    ap.add_argument("--policies", default=None, help=f"comma-separated subset of: {', '.join(POLICIES)}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the results files")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n.strip() for n in args.policies.split(",")] if args.policies else list(POLICIES)
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        ap.error(f"unknown policy {unknown[0]!r}; choose from: {', '.join(POLICIES)}")
    report = {"origin": origin(), "preset": args.preset, "epochs": args.epochs, "seeds": seeds, "policies": []}
    threads = torch.get_num_threads()
    for name in names:
        runs = []
        for seed in seeds:
            torch.set_num_threads(1)     # one core per run, as measured
            try:
                runs.append(run_one(POLICIES[name], seed, args.epochs, args.preset))
            finally:
                torch.set_num_threads(threads)
            print(name, json.dumps(runs[-1]), flush=True)
        done = [r for r in runs if not r["diverged"]]
        layers = list(runs[0]["share_per_layer"] or {})
        report["policies"].append({
            "name": name, "settings": POLICIES[name], "runs": runs, "diverged": len(runs) - len(done),
            "test_accuracy": _stats([r["test_accuracy"] for r in done]), "share": _stats([r["share"] for r in runs]),
            "share_per_layer": {k: _stats([r["share_per_layer"][k] for r in runs]) for k in layers}})
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = re.sub(r"[^a-z0-9]+", "-", machine_name().lower()).strip("-")
    stem = (f"{machine}-{datetime.date.today().isoformat()}-budget-digits"
            + ("" if args.preset == "simple_vgg" else f"-{args.preset}"))
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(report))
    print(f"written to {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
