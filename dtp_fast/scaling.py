"""``dtp-fast scaling``: data-parallel scaling efficiency of a training run.

For each rank count N it launches ``torchrun --standalone --nproc-per-node N``
on ``dtp-fast train`` (a fresh run in a temporary folder, a few batches of
``--batch-per-rank`` images per rank, so the global batch grows with N) and
reads the run's summary: images per second, and the seconds spent in
collective operations. The efficiency of N ranks is their images/s over N
times one rank's. On CPUs every rank gets ``cores // max(ranks)`` threads in
every run, so that all runs use the same resources per rank.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .utils import atomic_write_json, positive_int, versions

__all__ = ["add_arguments", "run"]


def _ranks(text: str) -> list[int]:
    try:
        out = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rank counts, got {text!r}") from None
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError(f"rank counts must be >= 1, got {text!r}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks", type=_ranks, default=[1, 2], help="rank counts to run, e.g. 1,2,4 (default 1,2)")
    p.add_argument("--preset", default="simple_vgg", help="network preset (default simple_vgg)")
    p.add_argument("--dataset", default="digits", help="data set (default digits; cifar10/imagenet32 need --data)")
    p.add_argument("--data", default=None, help="where the data set lives")
    p.add_argument("--batch-per-rank", type=positive_int, default=32, help="images per rank per batch (default 32)")
    p.add_argument("--batches", type=positive_int, default=10, help="training batches per run (default 10)")
    p.add_argument("--algo", default="ldrl", help="ldrl (default) or bp, ...")
    p.add_argument("--backend", default="auto", help="feedback backend (default auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other training setting, passed on to dtp-fast train")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--markdown", default=None, help="write a markdown table to this file")


def _launch(args, ranks: int, out: Path, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "dtp_fast.cli", "train", "--preset", args.preset, "--dataset", args.dataset,
           "--algo", args.algo, "--backend", args.backend, "--device", args.device, "--epochs", "1",
           "--batch-size", str(args.batch_per_rank * ranks), "--limit-batches", str(args.batches),
           "--out", str(out), "--json", "--set", "progress=false", "--set", "diagnostics=false"]
    if args.data:
        cmd += ["--data", args.data]
    for kv in args.set:
        cmd += ["--set", kv]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).splitlines()
        tail = "\n".join([line for line in lines if line.startswith("dtp-fast: error")][:1] or lines[-25:])
        raise RuntimeError(f"the run with {ranks} rank(s) failed (exit {proc.returncode}):\n{tail}")
    return json.loads((out / "summary.json").read_text())


def run(args) -> int:
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    threads = None if cuda else max(1, (os.cpu_count() or 1) // max(args.ranks))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dtp-fast-scaling-") as tmp:
        for n in args.ranks:
            print(f"scaling: {n} rank(s), global batch {args.batch_per_rank * n}", file=sys.stderr, flush=True)
            try:
                s = _launch(args, n, Path(tmp) / f"ranks{n}", threads)
            except RuntimeError as err:
                print(f"dtp-fast scaling: error: {err}", file=sys.stderr)
                return 2
            rows.append({"ranks": n, "global_batch": args.batch_per_rank * n,
                         "images_per_second": s["images_per_second"], "train_seconds": s["train_seconds"],
                         "comm_seconds": s["comm_seconds"],
                         "comm_fraction": s["comm_seconds"] / s["train_seconds"] if s["train_seconds"] else None,
                         "backend": s["backend"], "device": s["device"]})
    base = next((r for r in rows if r["ranks"] == 1), None)
    for r in rows:
        r["efficiency"] = (r["images_per_second"] / (r["ranks"] * base["images_per_second"])
                           if base else None)
    result = {"preset": args.preset, "dataset": args.dataset, "algo": args.algo,
              "batch_per_rank": args.batch_per_rank, "batches": args.batches, "threads_per_rank": threads,
              "results": rows, "versions": versions()}
    table = _markdown(result)
    print(table)
    if args.json:
        atomic_write_json(result, args.json)
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


def _markdown(res: dict) -> str:
    lines = [f"**dtp-fast scaling**: {res['algo']} {res['preset']} on {res['dataset']}, {res['batch_per_rank']} "
             f"images per rank per batch, {res['batches']} batches"
             + (f", {res['threads_per_rank']} CPU thread(s) per rank" if res["threads_per_rank"] else ""), "",
             "| ranks | global batch | images/s | efficiency | communication |",
             "|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        eff = f"{100 * r['efficiency']:.0f}%" if r["efficiency"] is not None else "-"
        comm = f"{r['comm_seconds']:.2f} s ({100 * r['comm_fraction']:.0f}%)" if r["comm_fraction"] is not None else "-"
        lines.append(f"| {r['ranks']} | {r['global_batch']} | {r['images_per_second']:.1f} | {eff} | {comm} |")
    return "\n".join(lines) + "\n"
