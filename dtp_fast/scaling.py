"""``dtp-fast scaling``: data-parallel scaling efficiency of a training run.

For each rank count N it launches ``torchrun --standalone --nproc-per-node N``
on ``dtp-fast train`` (a fresh run in a temporary folder, a few batches of
``batch_per_rank`` images per rank, so the global batch grows with N) and
reads the run's summary: images per second, and the seconds spent in
collective operations. The efficiency of N ranks is their images/s over N
times one rank's. On CPUs every rank gets ``cores // max(ranks)`` threads in
every run, so that all runs use the same resources per rank. The options are
in :mod:`dtp_fast.cli.scaling`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .utils import versions

__all__ = ["ScalingError", "scaling", "to_markdown"]


class ScalingError(RuntimeError):
    """The training run with some number of ranks failed (the message holds its error)."""


def _launch(ranks: int, out: Path, threads: int | None, preset: str, dataset: str, data, batch_per_rank: int,
            batches: int, algo: str, backend: str, device: str, settings) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "dtp_fast.cli", "train", "--preset", preset, "--dataset", dataset,
           "--algo", algo, "--backend", backend, "--device", device, "--epochs", "1",
           "--batch-size", str(batch_per_rank * ranks), "--limit-batches", str(batches),
           "--out", str(out), "--json", "--set", "progress=false", "--set", "diagnostics=false"]
    if data:
        cmd += ["--data", data]
    for key, value in settings:
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [line for line in lines if line.startswith("dtp-fast") and ": error:" in line]
        tail = "\n".join(errors[:1] or lines[-25:])
        raise ScalingError(f"the run with {ranks} rank(s) failed (exit {proc.returncode}):\n{tail}")
    return json.loads((out / "summary.json").read_text())


def scaling(ranks=(1, 2), preset: str = "simple_vgg", dataset: str = "digits", data=None, batch_per_rank: int = 32,
            batches: int = 10, algo: str = "ldrl", backend: str = "auto", device: str = "auto", settings=(),
            log=None) -> dict:
    """Train ``batches`` batches with each rank count in ``ranks`` under torchrun and return
    ``{"results": [{"ranks", "images_per_second", "efficiency", "comm_seconds", ...}], ...}``.
    ``settings``: more ``(key, value)`` training settings; ``log(msg)`` gets a line per run."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    threads = None if cuda else max(1, (os.cpu_count() or 1) // max(ranks))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dtp-fast-scaling-") as tmp:
        for n in ranks:
            if log:
                log(f"scaling: {n} rank(s), global batch {batch_per_rank * n}")
            s = _launch(n, Path(tmp) / f"ranks{n}", threads, preset, dataset, data, batch_per_rank, batches, algo,
                        backend, device, settings)
            rows.append({"ranks": n, "global_batch": batch_per_rank * n,
                         "images_per_second": s["images_per_second"], "train_seconds": s["train_seconds"],
                         "comm_seconds": s["comm_seconds"],
                         "comm_fraction": s["comm_seconds"] / s["train_seconds"] if s["train_seconds"] else None,
                         "backend": s["backend"], "device": s["device"]})
    base = next((r for r in rows if r["ranks"] == 1), None)
    for r in rows:
        r["efficiency"] = (r["images_per_second"] / (r["ranks"] * base["images_per_second"])
                           if base else None)
    return {"preset": preset, "dataset": dataset, "algo": algo, "batch_per_rank": batch_per_rank,
            "batches": batches, "threads_per_rank": threads, "results": rows, "versions": versions()}


def to_markdown(res: dict) -> str:
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
