"""One command for a GPU: every feedback backend against `reference`, then the timings of issue #4.

    python benchmarks/gpu_check.py                  # CUDA: SimpleVGG full width, batch 128, paper iterations
    python benchmarks/gpu_check.py --device cpu --width 0.125 --batch-size 8 --quick    # smoke run, seconds

It needs only this checkout (no network, no data sets) and runs in under 5 minutes on one H100/H200:

1. Correctness: every backend usable on the device (``torch``, ``triton``, ``cuda``, ... as built) trains
   the feedback layers of two small networks (SimpleVGG with 2x2 pools; LeNet with the overlapping 3/2/1
   pools and 2 noise samples) for 3 batches with the same counter-based noise as ``reference``, TF32 off;
   weights, momentum buffers and losses must agree within the float32 tolerances of tests/backends/test_every_backend.py
   (rtol 1e-4, atol 1e-6, for the momentum buffers atol 1e-6 times their largest magnitude, as they hold
   gradient sums up to ~50 where a float32 ulp exceeds 1e-6; losses rel 1e-3). Three batches exercise the
   ``triton`` backend's CUDA graph: eager warm-up, capture, replay.
2. TF32 (CUDA, Ampere or newer): the weight alignment (ALGORITHM.md section 6) after 3 feedback phases of
   SimpleVGG at width 0.25 with TF32 convolutions against full float32: angles within 0.5 degree and
   relative distances within 0.01.
3. Timings (``dtp_fast.bench``): the feedback phase of one batch per backend and its speedup over
   ``reference``, one whole L-DRL training step with the fastest backend, one backprop step, peak memory.

Writes ``benchmarks/results/gpu-check-<device name>-<date>.json`` and ``.md`` (``--out`` for another
folder). The JSON holds the bench's ``results`` list (per backend: ``backend``, ``feedback_seconds``,
``speedup_vs_reference``, ``peak_memory_bytes``), ``device`` (the GPU's name), ``ldrl_step_seconds`` (best
backend), ``backprop_step_seconds``, ``correctness``, ``tf32`` and ``targets`` (issue #4: feedback phase at
least 4x faster than ``reference``, an L-DRL step at most 8x a backprop step, every backend equal to
``reference``). Exits 1 if a backend disagrees with ``reference``, else 0.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import pathlib
import re
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's dtp_fast, installed or not

import torch  # noqa: E402

from dtp_fast import bench  # noqa: E402
from dtp_fast.feedback import (FeedbackConfig, FeedbackState, available_backends, get_backend,  # noqa: E402
                               train_feedback)
from dtp_fast.feedback.gpu import fp32_precision, full_float32  # noqa: E402
from dtp_fast.noise import CounterNoise  # noqa: E402

RTOL, ATOL, LOSS_RTOL = 1e-4, 1e-6, 1e-3
TF32_ANGLE_TOL_DEG, TF32_DISTANCE_TOL = 0.5, 0.01
TARGET_SPEEDUP, TARGET_STEP_RATIO = 4.0, 8.0


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- 1. correctness
def _cases():
    from dtp_fast.presets import lenet, simple_vgg

    return {
        "simple_vgg channels 8,8,16,16,32, batch 4, 2x2 pools": dict(
            make=lambda: simple_vgg((3, 32, 32), 10, channels=[8, 8, 16, 16, 32]), batch=4,
            config=FeedbackConfig(iterations=[3, 4, 3, 5, 2], lr=[1e-4, 3.5e-4, 8e-3, 8e-3, 0.18],
                                  noise=[0.4, 0.4, 0.2, 0.2, 0.08])),
        "lenet channels 4,8 hidden 64, batch 3, 3/2/1 pools, 2 noise samples": dict(
            make=lambda: lenet((3, 32, 32), 10, channels=[4, 8], hidden=64), batch=3,
            config=FeedbackConfig(iterations=[3, 2, 4], lr=[7.19e-4, 1.25e-4, 3.54e-2],
                                  noise=[0.4164, 0.3826, 0.1395], samples=2)),
    }


def _feedback_runs(net, x, config, backend: str, steps: int):
    """Weights, momentum buffers and per-step losses after ``steps`` feedback phases (and how the
    backend ran its chain, where it says)."""
    net = copy.deepcopy(net)
    state, losses, chains = FeedbackState(), [], []
    impl = get_backend(backend, x.device)
    for s in range(steps):
        acts, sw = net.activations(x)
        losses.append(train_feedback(net, [a.detach() for a in acts], sw, config, state, CounterNoise(7), s,
                                     backend=backend, report="all"))
        chains.append(getattr(impl, "last_chain", None))
    weights = {f"{n}.{k}": v.detach().double().cpu() for n in net.feedback_names
               for k, v in net.blocks[n].g_op.named_parameters()}
    # momentum of the weights (the bias's L-DRL gradient is exactly 0: its buffer only moves with weight decay)
    bufs = {k: v.double().cpu() for k, v in state.buffers.items() if k.endswith(".weight")}
    return weights, bufs, losses, chains


def _worst(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> tuple[float, float]:
    """max |a - b| and max |a - b| / (atol + rtol |b|) (<= 1 passes)."""
    diff = (a - b).abs()
    return float(diff.max()), float((diff / (atol + rtol * b.abs())).max())


def check_backend(backend: str, device, steps: int = 3, references: dict | None = None) -> list[dict]:
    """Compare ``backend`` with ``reference`` on every case; one result dict per case."""
    out = []
    references = {} if references is None else references
    for name, case in _cases().items():
        torch.manual_seed(0)
        net = case["make"]().to(device)
        x = torch.randn(case["batch"], 3, 32, 32, device=device)
        row = {"backend": backend, "case": name, "steps": steps, "rtol": RTOL, "atol": ATOL, "loss_rtol": LOSS_RTOL}
        try:
            with full_float32():
                if name not in references:
                    references[name] = _feedback_runs(net, x, case["config"], "reference", steps)
                ref = references[name]
                got = _feedback_runs(net, x, case["config"], backend, steps)
            worst_abs, worst_ratio = 0.0, 0.0
            for key in ref[0]:
                d, r = _worst(got[0][key], ref[0][key], RTOL, ATOL)
                worst_abs, worst_ratio = max(worst_abs, d), max(worst_ratio, r)
            for key in ref[1]:  # momentum buffers hold gradient sums up to ~50: atol scaled by the largest
                scale = max(1.0, float(ref[1][key].abs().max()))
                d, r = _worst(got[1][key], ref[1][key], RTOL, ATOL * scale)
                worst_abs, worst_ratio = max(worst_abs, d), max(worst_ratio, r)
            loss_ratio = 0.0
            for ls_ref, ls_got in zip(ref[2], got[2]):
                for layer in ls_ref:
                    a = torch.tensor(ls_got[layer]["loss"], dtype=torch.float64)
                    b = torch.tensor(ls_ref[layer]["loss"], dtype=torch.float64)
                    loss_ratio = max(loss_ratio, _worst(a, b, LOSS_RTOL, ATOL)[1])
            row.update(passed=worst_ratio <= 1 and loss_ratio <= 1, max_abs_diff=worst_abs,
                       worst_tolerance_ratio=worst_ratio, worst_loss_tolerance_ratio=loss_ratio, chain=got[3])
        except Exception as err:  # noqa: BLE001 - a broken backend is a result, not the end of the check
            row.update(passed=False, error=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc(limit=6))
        _log(f"  {backend:>9} | {name}: {'ok' if row['passed'] else 'FAILED'} "
             f"(worst |diff| / tolerance {row.get('worst_tolerance_ratio', float('nan')):.3g}"
             f"{', ' + row['error'] if 'error' in row else ''})")
        out.append(row)
    return out


# ---------------------------------------------------------------------------- 2. TF32
def tf32_alignment_check(device="cuda", width: float = 0.25, batch: int = 32, steps: int = 3) -> dict:
    """Weight alignment of SimpleVGG's feedback layers after ``steps`` feedback phases (paper
    iterations) with TF32 convolutions against full float32, from the same weights and noise."""
    from dtp_fast.diagnostics import weight_alignment

    device = torch.device(device)
    backend = "triton" if available_backends(device).get("triton", (False,))[0] else "torch"
    net0, hp, _ = bench.build_net("simple_vgg", width, 0)
    net0 = net0.to(device)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    config = FeedbackConfig(iterations=list(hp["feedback_iters"]), lr=list(hp["feedback_lr"]), noise=list(hp["noise"]))
    impl = get_backend(backend, device)
    saved = getattr(impl, "tf32", None)
    result = {"backend": backend, "width": width, "batch": batch, "steps": steps,
              "angle_tolerance_deg": TF32_ANGLE_TOL_DEG, "distance_tolerance": TF32_DISTANCE_TOL}
    try:
        for flag in (False, True):
            if hasattr(impl, "tf32"):
                impl.tf32 = flag
            net, state = copy.deepcopy(net0), FeedbackState()
            with fp32_precision(flag):       # the torch backend's convolutions too
                for s in range(steps):
                    acts, sw = net.activations(x)
                    train_feedback(net, [a.detach() for a in acts], sw, config, state, CounterNoise(1), s,
                                   backend=backend, report="none")
            result["tf32" if flag else "float32"] = weight_alignment(net)
    finally:
        if hasattr(impl, "tf32"):
            impl.tf32 = saved
    layers = result["float32"]
    result["max_angle_diff_deg"] = max(abs(result["tf32"][n]["angle_deg"] - layers[n]["angle_deg"]) for n in layers)
    result["max_distance_diff"] = max(abs(result["tf32"][n]["distance"] - layers[n]["distance"]) for n in layers)
    result["passed"] = (result["max_angle_diff_deg"] <= TF32_ANGLE_TOL_DEG
                        and result["max_distance_diff"] <= TF32_DISTANCE_TOL)
    return result


# ---------------------------------------------------------------------------- output
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "unknown"


def _paths(out_dir: pathlib.Path, device_name: str, date: str, label: str = "") -> tuple[pathlib.Path, pathlib.Path]:
    stem = f"gpu-check-{_slug(device_name)}-{date}" + (f"-{_slug(label)}" if label else "")
    n = 1
    while (out_dir / f"{stem}.json").exists():
        n += 1
        stem = f"gpu-check-{_slug(device_name)}-{date}-{n}"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def _targets(res: dict, on_gpu: bool) -> dict:
    rows = [r for r in res.get("results", []) if r["backend"] != "reference"]
    best = max(rows, key=lambda r: r["speedup_vs_reference"], default=None)
    ratio = res.get("ldrl_vs_backprop")
    correct = all(c["passed"] for c in res["correctness"])
    note = None if on_gpu else "not a GPU run: the GPU targets are not measured"
    return {
        "feedback_speedup_vs_reference": {"target": f">= {TARGET_SPEEDUP:g}x", "backend": best and best["backend"],
                                          "value": best and best["speedup_vs_reference"],
                                          "met": bool(best and best["speedup_vs_reference"] >= TARGET_SPEEDUP)},
        "ldrl_step_vs_backprop_step": {"target": f"<= {TARGET_STEP_RATIO:g}x", "backend": res.get("ldrl_step_backend"),
                                       "value": ratio, "met": ratio is not None and ratio <= TARGET_STEP_RATIO},
        "every_backend_equals_reference": {"target": f"rtol {RTOL:g}, atol {ATOL:g}", "value": correct, "met": correct},
        "note": note,
    }


def to_markdown(res: dict) -> str:
    lines = [f"# gpu_check on {res['device']} ({res['torch_device']}), {res['date']}", "",
             f"torch {res['versions']['torch']}, triton {res['versions'].get('triton')}, CUDA "
             f"{res['cuda_version']}, dtp_fast {res['versions']['dtp_fast']}; {res['elapsed_seconds']:.0f} s in all."
             + bench.environment_text(res),
             "", "## Backends against `reference` (float32, TF32 off, same counter-based noise, 3 batches)", "",
             "| backend | case | result | max abs diff | worst diff / tolerance | chain |", "|---|---|---|---:|---:|---|"]
    for c in res["correctness"]:
        verdict = "ok" if c["passed"] else "**FAILED**" + (f": {c['error']}" if "error" in c else "")
        chain = ", ".join(dict.fromkeys(x for x in (c.get("chain") or []) if x)) or "-"
        lines.append(f"| `{c['backend']}` | {c['case']} | {verdict} | {c.get('max_abs_diff', float('nan')):.3g} | "
                     f"{c.get('worst_tolerance_ratio', float('nan')):.3g} | {chain} |")
    t = res.get("tf32")
    lines += ["", "## TF32", ""]
    if t is None:
        lines.append("Not checked (not a CUDA device of compute capability 8.0 or newer).")
    elif "error" in t:
        lines.append(f"**FAILED**: {t['error']}")
    else:
        lines.append(f"`{t['backend']}`, SimpleVGG width {t['width']:g}, batch {t['batch']}, {t['steps']} feedback "
                     f"phases: max alignment angle difference TF32 vs float32 {t['max_angle_diff_deg']:.3g} deg "
                     f"(tolerance {t['angle_tolerance_deg']:g}), max distance difference {t['max_distance_diff']:.3g} "
                     f"(tolerance {t['distance_tolerance']:g}): {'ok' if t['passed'] else '**FAILED**'}.")
    lines += ["", "## Timings", "", bench.to_markdown(res["bench"]).rstrip(), "", "## Targets (issue #4)", "",
              "| target | value | met |", "|---|---|---|"]
    for name, tg in res["targets"].items():
        if name == "note":
            continue
        v = tg["value"]
        v = f"{v:.2f}x" if isinstance(v, float) else str(v)
        who = f" (`{tg['backend']}`)" if tg.get("backend") else ""
        lines.append(f"| {name.replace('_', ' ')} {tg['target']} | {v}{who} | {'yes' if tg['met'] else 'no'} |")
    if res["targets"]["note"]:
        lines += ["", f"_{res['targets']['note']}._"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a smoke run")
    p.add_argument("--width", type=float, default=1.0, help="SimpleVGG width for the timings (default 1: the paper's)")
    p.add_argument("--batch-size", type=int, default=128, help="batch for the timings (default 128)")
    p.add_argument("--iterations", default=None,
                   help="feedback iterations per layer for the timings, comma-separated (default: the paper's "
                        "CIFAR-10 ones, 20,30,35,55,20; ImageNet32: 25,35,40,60,25)")
    p.add_argument("--label", default="", help="added to the output file names (e.g. cifar10, imagenet32)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5, --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 feedback iterations per layer in the timings, 1 repeat, no TF32 check")
    p.add_argument("--per-layer", action="store_true", help="also time each layer alone (slower)")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: every usable one)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and markdown")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    from dtp_fast.utils import atomic_write_json, atomic_write_text, origin, resolve_device, versions

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    device_name = bench.device_name(device)
    usable = [n for n, (ok, _) in available_backends(device).items() if ok]
    if args.backends:
        usable = [n for n in usable if n in args.backends.split(",") or n == "reference"]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = _paths(out_dir, device_name, date, args.label)
    _log(f"{device_name} ({device}); dtp_fast from {pathlib.Path(bench.__file__).parent}; usable backends: "
         f"{', '.join(usable)}; unusable: " + "; ".join(f"{n} ({why})" for n, (ok, why) in
                                                       available_backends(device).items() if not ok))
    res = {"check": "gpu_check", "label": args.label, **origin(), "date": date, "device": device_name,
           "torch_device": str(device),
           "cuda_version": torch.version.cuda, "versions": versions(),
           "gpu": ({"name": device_name, "capability": list(torch.cuda.get_device_capability(device)),
                    "memory_bytes": torch.cuda.get_device_properties(device).total_memory} if on_gpu else None),
           "backends": {n: {"usable": ok, "note": why} for n, (ok, why) in available_backends(device).items()},
           "correctness": [], "tf32": None, "status": "running"}

    _log("1/3 correctness against reference")
    refs = {}
    for b in usable:
        if b != "reference":
            res["correctness"] += check_backend(b, device, references=refs)
    atomic_write_json(res, json_path)  # a partial result survives a time-out

    if on_gpu and not args.quick and torch.cuda.get_device_capability(device) >= (8, 0):
        _log("2/3 TF32 alignment")
        try:
            res["tf32"] = tf32_alignment_check(device)
        except Exception as err:  # noqa: BLE001
            res["tf32"] = {"passed": False, "error": f"{type(err).__name__}: {err}"}
        atomic_write_json(res, json_path)

    # a backend that raised above would abort the bench: time the others
    broken = sorted({c["backend"] for c in res["correctness"] if "error" in c})
    timed = [b for b in usable if b not in broken]
    res["excluded_from_timings"] = broken
    _log("3/3 timings" + (f" (without {', '.join(broken)}, which raised)" if broken else ""))
    ns = argparse.Namespace(net="simple_vgg", width=args.width, batch_size=args.batch_size,
                            iterations=[2] if args.quick else (
                                [int(v) for v in args.iterations.split(",")] if args.iterations else None),
                            backends=",".join(timed),
                            per_layer=args.per_layer, repeats=args.repeats or (1 if args.quick else 5),
                            device=str(device), dtype="float32", memory_budget="default", threads=None, seed=0,
                            json=None, markdown=None, plot=None, quiet=False)
    timing = bench._Bench(ns).run()
    res.update(bench=timing, results=timing["results"], backprop_step_seconds=timing["backprop_step_seconds"],
               ldrl_step_seconds=timing["ldrl_step_seconds"], ldrl_step_backend=timing["ldrl_step_backend"],
               ldrl_vs_backprop=timing["ldrl_vs_backprop"], status="done")
    res["targets"] = _targets(res, on_gpu)
    res["elapsed_seconds"] = time.perf_counter() - t_start
    md = to_markdown(res)
    atomic_write_json(res, json_path)
    atomic_write_text(md, md_path)
    print(md, end="")
    _log(f"wrote {json_path} and {md_path} ({res['elapsed_seconds']:.0f} s)")
    return 0 if all(c["passed"] for c in res["correctness"]) else 1


if __name__ == "__main__":
    sys.exit(main())
