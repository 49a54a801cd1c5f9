"""The harness of the op micro-benchmarks (benchmarks/ops/bench_<family>.py).

Each benchmark times every implementation of its ops that can run on the device -- ``torch`` (the
PyTorch reference), ``cpu`` / ``cuda`` (the compiled kernels of dtp_fast._C) and ``triton`` (compiled
Triton kernels; GPU only: the interpreter's timings mean nothing) -- at one or two representative shapes
(CIFAR-10 LeNet / SimpleVGG layer sizes at batch 32), takes the median of ``--repeats`` runs after
``--warmup`` runs, prints a table, and with ``--out`` writes JSON that records the command, git commit,
machine and date.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's dtp_fast, installed or not

import torch  # noqa: E402

from dtp_fast import _ext  # noqa: E402
from dtp_fast.utils import cpu_name, origin, resolve_device  # noqa: E402

IMPLS = ("torch", "cpu", "cuda", "triton")


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per implementation and shape (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--quick", action="store_true", help="tiny shapes (to check that the benchmark runs)")
    p.add_argument("--out", type=pathlib.Path, help="write the results as JSON to this file")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    return args


def available_impls(device: torch.device) -> dict[str, str | None]:
    """{implementation: None if it runs on ``device``, else why not}."""
    from dtp_fast.ops import triton as kernels

    why = {"torch": None}
    if device.type == "cpu":
        why["cpu"] = None if _ext.available() else _ext.load_error()
        why["cuda"] = why["triton"] = "needs a CUDA device"
    else:
        from dtp_fast.feedback.backends.cuda import cuda_kernels_problem

        why["cpu"] = "times CPU tensors (use --device cpu)"
        why["cuda"] = cuda_kernels_problem()
        why["triton"] = kernels.load_error() if not kernels.available() else (
            "TRITON_INTERPRET is set" if kernels.interpreting() else None)
    return why


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, repeats: int, warmup: int) -> dict:
    """Median and minimum seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def run(family: str, cases, args: argparse.Namespace) -> dict:
    """Time ``cases``: [(op, shape label, {impl: fn})]; implementations that cannot run here are
    skipped (and listed). Prints a table; writes JSON with ``--out``. Returns the record."""
    why = available_impls(args.device)
    rows = []
    for op, label, fns in cases:
        for impl, fn in fns.items():
            if why.get(impl) is not None:
                continue
            rows.append({"op": op, "shape": label, "impl": impl, "warmup": args.warmup,
                         **time_fn(fn, args.device, args.repeats, args.warmup)})
    _print(family, rows, why)
    record = {
        "benchmark": f"ops/{family}",
        **origin(),
        "cpu": cpu_name(),
        "device": str(args.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "skipped": {impl: reason for impl, reason in why.items() if reason is not None},
        "results": rows,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return record


def _print(family: str, rows, why) -> None:
    print(f"ops/{family}: median of the timed runs (ms); x: speed-up over torch")
    print(f"{'op':<26} {'shape':<34} {'impl':<7} {'median':>10} {'x':>7}")
    base = {(r["op"], r["shape"]): r["median_s"] for r in rows if r["impl"] == "torch"}
    for r in rows:
        ref = base.get((r["op"], r["shape"]))
        speed = f"{ref / r['median_s']:.2f}" if ref and r["median_s"] > 0 else "-"
        print(f"{r['op']:<26} {r['shape']:<34} {r['impl']:<7} {1e3 * r['median_s']:>10.3f} {speed:>7}")
    for impl, reason in why.items():
        if reason is not None:
            print(f"  ({impl} not timed: {reason})")


def main(family: str, cases, doc: str, argv=None) -> int:
    """The command line of a benchmark: ``cases(args)`` gives its [(op, shape label, {impl: fn})]."""
    args = parse_args(doc.splitlines()[0], argv)
    run(family, cases(args), args)
    return 0


def triton_module(name: str, device: torch.device):
    """dtp_fast.ops.triton.<name> when Triton kernels are timed on ``device``, else None."""
    if available_impls(device)["triton"] is not None:
        return None
    import importlib

    return importlib.import_module(f"dtp_fast.ops.triton.{name}")


def randn(shape, device, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).to(device)
