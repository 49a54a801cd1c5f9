"""``dtp-fast bench``: time the L-DRL feedback phase of one batch, per backend.

For SimpleVGG or LeNet at the paper's per-layer iteration counts (ALGORITHM.md
section 4), this measures, on random inputs:

- the feedback phase of one batch (all layers), for every requested backend,
  and each layer alone (the other layers' iteration counts set to 0);
- one backprop training step of the same network (forward, backward, SGD);
- one whole L-DRL training step (feedback phase + DTP forward phase) with the
  fastest backend;
- the peak memory of each, in a separate untimed run.

Every timing is the median of ``--repeats`` runs after one warm-up; the runs of
the different backends are interleaved, and each starts from the same weights
and a fresh optimiser state. Ratios are to the ``reference`` backend measured
in the same run.

Use it as ``dtp-fast bench ...`` or ``python benchmarks/bench_feedback.py ...``
(the options are in :mod:`dtp_fast.cli.bench`); ``_Bench(args).run()`` returns the
results, :func:`to_markdown` and :func:`write_plot` present them.
"""
from __future__ import annotations

import copy
import math
import os
import statistics
import sys
import time
from typing import Callable

import torch

from .peak_memory import memory_method, peak_memory, synchronize
from .utils import cpu_name, origin

__all__ = ["BenchError", "build_net", "scale_width", "peak_memory", "to_markdown", "write_plot", "device_name"]

NETS = ("simple_vgg", "lenet")


class BenchError(ValueError):
    """A bad benchmark setting (the message says which and what is allowed)."""


# ---------------------------------------------------------------------------- network
def scale_width(values, width: float) -> list[int]:
    """``round(v * width)``, at least 1, for each value."""
    return [max(1, int(round(v * width))) for v in values]


def build_net(name: str, width: float, seed: int):
    """The network with the paper's CIFAR-10 shapes scaled by ``width``, its paper
    hyperparameters and its architecture description."""
    from .presets import PRESETS, lenet, simple_vgg

    hp = PRESETS[name].defaults("cifar10")
    torch.manual_seed(seed)
    if name == "simple_vgg":
        channels = scale_width(hp.get("channels", [128, 128, 256, 256, 512]), width)
        net = simple_vgg((3, 32, 32), 10, channels=channels)
        arch = {"channels": channels}
    else:
        channels = scale_width([32, 64], width)
        hidden = scale_width([512], width)[0]
        net = lenet((3, 32, 32), 10, channels=channels, hidden=hidden)
        arch = {"channels": channels, "hidden": hidden}
    return net, hp, arch


# ---------------------------------------------------------------------------- machine
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _load_average():
    """The 1-minute load average at the end of the run (other work skews timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------- the benchmark
def _select_backends(requested: str | None, device: torch.device) -> list[str]:
    from .feedback import available_backends

    avail = available_backends(device)
    usable = [n for n, (ok, _) in avail.items() if ok]
    if "reference" not in usable:
        why = avail.get("reference", (False, "not registered"))[1]
        raise BenchError(f"the reference backend cannot run on {device} ({why}); ratios need it")
    if requested is None:
        names = usable
    else:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        for n in names:
            if n not in avail:
                raise BenchError(f"unknown feedback backend {n!r}; usable on {device}: {', '.join(usable)}")
            if not avail[n][0]:
                raise BenchError(f"feedback backend {n!r} cannot run on {device}: {avail[n][1]}; "
                                 f"usable on {device}: {', '.join(usable)}")
    names = ["reference"] + [n for n in dict.fromkeys(names) if n != "reference"]
    return names


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


class _Bench:
    def __init__(self, args):
        from .noise import CounterNoise
        from .utils import resolve_device

        self.args = args
        self.log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        try:
            self.device = resolve_device(args.device)
        except RuntimeError as err:  # CUDA asked for but missing
            raise BenchError(str(err)) from None
        self.dtype = getattr(torch, args.dtype)
        if args.threads:
            torch.set_num_threads(args.threads)
        self.backends = _select_backends(args.backends, self.device)

        net, hp, self.arch = build_net(args.net, args.width, args.seed)
        self.net = net.to(device=self.device, dtype=self.dtype)
        self.layers = list(self.net.feedback_names)
        iters = args.iterations if args.iterations is not None else list(hp["feedback_iters"])
        if len(iters) == 1:
            iters = iters * len(self.layers)
        if len(iters) != len(self.layers):
            raise BenchError(f"--iterations has {len(iters)} value(s) {iters} but {args.net} has "
                             f"{len(self.layers)} trained feedback layer(s): {', '.join(self.layers)}; give one "
                             f"per layer, in this order, or one for all")
        self.iterations = [int(k) for k in iters]
        self.lr, self.noise_sigma = list(hp["feedback_lr"]), list(hp["noise"])
        self.beta = float(hp["beta"])
        self.initial = copy.deepcopy(self.net.state_dict())

        gen = torch.Generator().manual_seed(args.seed)
        self.x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device=self.device, dtype=self.dtype)
        self.labels = torch.randint(0, 10, (args.batch_size,), generator=gen).to(self.device)
        with torch.no_grad():
            acts, switches = self.net.activations(self.x)
        self.acts = [a.detach() for a in acts]
        self.switches = switches
        self.noise = CounterNoise(args.seed)
        self.mem_method = memory_method(self.device)

    # -- one run of each kind, from the initial weights ------------------------
    def _config(self, iterations):
        from .feedback import FeedbackConfig

        return FeedbackConfig(iterations=list(iterations), lr=self.lr, noise=self.noise_sigma)

    def _reset(self) -> None:
        self.net.load_state_dict(self.initial)
        self.net.zero_grad(set_to_none=True)

    def feedback_run(self, backend: str, iterations, step: int) -> Callable[[], None]:
        from .feedback import FeedbackState, train_feedback

        config = self._config(iterations)

        def go():
            train_feedback(self.net, self.acts, self.switches, config, FeedbackState(), self.noise, step,
                           backend=backend, report="none", memory_budget=self.args.memory_budget)
        return go

    def _sgd(self):
        return torch.optim.SGD(self.net.forward_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def backprop_run(self, step: int) -> Callable[[], None]:
        from .dtp import bp_loss

        opt = self._sgd()

        def go():
            opt.zero_grad(set_to_none=True)
            loss, _ = bp_loss(self.net, self.x, self.labels)
            loss.backward()
            opt.step()
        return go

    def ldrl_run(self, backend: str, step: int) -> Callable[[], None]:
        from .dtp import dtp_loss
        from .feedback import FeedbackState, train_feedback

        config = self._config(self.iterations)
        opt = self._sgd()

        def go():
            acts, switches = self.net.activations(self.x, detach_inputs=True)
            train_feedback(self.net, [a.detach() for a in acts], switches, config, FeedbackState(), self.noise,
                           step, backend=backend, report="none", memory_budget=self.args.memory_budget)
            opt.zero_grad(set_to_none=True)
            loss, _ = dtp_loss(self.net, self.x, self.labels, self.beta, acts, switches)
            loss.backward()
            opt.step()
        return go

    # -- timing ------------------------------------------------------------------
    def _time_once(self, make: Callable[[int], Callable[[], None]], step: int) -> float:
        self._reset()
        fn = make(step)
        synchronize(self.device)
        t0 = time.perf_counter()
        fn()
        synchronize(self.device)
        return time.perf_counter() - t0

    def time_interleaved(self, label: str, makers: dict) -> dict[str, list[float]]:
        """One warm-up, then ``repeats`` timed runs of each maker, interleaved. Repeat r
        uses noise step r (the warm-up step -1)."""
        for name, make in makers.items():
            self._time_once(make, -1)
        times = {name: [] for name in makers}
        for r in range(self.args.repeats):
            for name, make in makers.items():
                times[name].append(self._time_once(make, r))
        self.log(f"  {label}: " + ", ".join(f"{n} {_median(t):.4f} s" for n, t in times.items()))
        return times

    def measure_memory(self, make: Callable[[int], Callable[[], None]]) -> int:
        self._reset()
        fn = make(0)
        return int(peak_memory(fn, self.device, self.mem_method))

    # -- everything --------------------------------------------------------------
    def run(self) -> dict:
        a = self.args
        self.log(f"bench: {a.net} width {a.width} ({self._arch_text()}), batch {a.batch_size}, iterations "
                 f"{self.iterations}, {a.dtype} on {self.device} ({device_name(self.device)}), backends "
                 f"{', '.join(self.backends)}, {a.repeats} repeats after 1 warm-up")
        total = self.time_interleaved(
            "feedback phase", {b: (lambda s, b=b: self.feedback_run(b, self.iterations, s)) for b in self.backends})
        per_layer = {b: {} for b in self.backends}
        if a.per_layer:
            for i, layer in enumerate(self.layers):
                if self.iterations[i] == 0:
                    for b in self.backends:
                        per_layer[b][layer] = 0.0
                    continue
                only = [k if j == i else 0 for j, k in enumerate(self.iterations)]
                t = self.time_interleaved(
                    f"layer {layer} ({self.iterations[i]} iterations)",
                    {b: (lambda s, b=b, only=only: self.feedback_run(b, only, s)) for b in self.backends})
                for b in self.backends:
                    per_layer[b][layer] = _median(t[b])
        bp = self.time_interleaved("backprop step", {"backprop": self.backprop_run})["backprop"]
        medians = {b: _median(total[b]) for b in self.backends}
        best = min(self.backends, key=lambda b: medians[b])
        ldrl = self.time_interleaved(f"L-DRL step ({best})", {best: lambda s: self.ldrl_run(best, s)})[best]

        # memory: separate, untimed runs
        memory = {b: self.measure_memory(lambda s, b=b: self.feedback_run(b, self.iterations, s))
                  for b in self.backends}
        bp_mem = self.measure_memory(self.backprop_run)
        ldrl_mem = self.measure_memory(lambda s: self.ldrl_run(best, s))
        self.log("  peak memory (" + self.mem_method + "): "
                 + ", ".join(f"{b} {m / 2**20:.1f} MiB" for b, m in memory.items()))
        self._reset()

        from .feedback import available_backends
        from .utils import versions

        reasons = available_backends(self.device)
        ref_t, ref_m = medians["reference"], memory["reference"]
        results = []
        for b in self.backends:
            results.append({
                "backend": b,
                "note": reasons[b][1],
                "feedback_seconds": medians[b],
                "feedback_seconds_all": total[b],
                "speedup_vs_reference": (ref_t / medians[b]) if b != "reference" else 1.0,
                "peak_memory_bytes": memory[b],
                "memory_vs_reference": (memory[b] / ref_m) if ref_m > 0 else None,
                "per_layer": per_layer[b],
            })
        bp_s, ldrl_s = _median(bp), _median(ldrl)
        return {
            "net": a.net,
            "width": a.width,
            **self.arch,
            "batch_size": a.batch_size,
            "layers": self.layers,
            "iterations": self.iterations,
            "feedback_lr": self.lr,
            "noise": self.noise_sigma,
            "dtype": a.dtype,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(),
            "load_average": _load_average(),
            **origin(),
            "versions": versions(),
            "seed": a.seed,
            "memory_budget": a.memory_budget,
            "repeats": a.repeats,
            "results": results,
            "backprop_step_seconds": bp_s,
            "backprop_step_seconds_all": bp,
            "backprop_step_peak_memory_bytes": bp_mem,
            "ldrl_step_seconds": ldrl_s,
            "ldrl_step_seconds_all": ldrl,
            "ldrl_step_backend": best,
            "ldrl_step_peak_memory_bytes": ldrl_mem,
            "ldrl_vs_backprop": ldrl_s / bp_s if bp_s > 0 else None,
            "peak_memory_method": self.mem_method,
            "planner": self.planner(),
        }

    def planner(self) -> dict:
        """The memory planner's figures per layer (bytes): what one precomputed iteration stores (dh2 at the
        block's output resolution and A_k; ``dh2_unpooled_bytes``: what dh2 took unpooled, before it was kept
        pooled), what the layer holds for the phase and its chunk length on a CPU (iterations, at a budget
        that does not cap it); and the budget of a chunk of every iteration."""
        from .feedback import memory

        blocks = self.net.block_list()[1:]
        hp = self._config(self.iterations).resolve(self.layers)
        esize, batch = self.x.element_size(), self.args.batch_size
        layers = {}
        chunks = memory.cpu_chunk_targets(blocks, hp, batch, esize)
        for name, b, h, chunk in zip(self.layers, blocks, hp, chunks):
            stored, _, fixed = memory.layer_memory(b, batch, h.samples, esize)
            rows = h.samples * batch
            conv = b.kind != "linear"
            layers[name] = {"stored_bytes_per_iteration": stored, "fixed_bytes": fixed, "cpu_chunk_iterations": chunk,
                            "dh2_bytes_per_iteration": rows * math.prod(b.out_shape) * esize if conv else None,
                            "dh2_unpooled_bytes_per_iteration":
                                rows * math.prod(b.pre_pool_shape) * esize if conv else None}
        return {"layers": layers,
                "minimum_budget_bytes": memory.minimum_memory_budget(blocks, hp, batch, esize),
                "whole_phase_budget_bytes": memory.chunk_memory_budget(max(self.iterations, default=1), blocks, hp,
                                                                       batch, esize)}

    def _arch_text(self) -> str:
        s = "channels " + ",".join(map(str, self.arch["channels"]))
        if "hidden" in self.arch:
            s += f", hidden {self.arch['hidden']}"
        return s


# ---------------------------------------------------------------------------- reports
def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _secs(s) -> str:
    return "-" if s is None else (f"{s:.4f}" if s < 10 else f"{s:.2f}")


_METHOD_TEXT = {"proc_vmhwm": "peak RSS growth (VmHWM)", "getrusage_maxrss": "peak RSS growth (getrusage)",
                "cuda_max_memory_allocated": "CUDA max_memory_allocated growth"}


def environment_text(res: dict) -> str:
    """`` Environment: `DTP_FAST_X=1`, ...`` for the settings a results file recorded (empty without any)."""
    env = res.get("environment") or {}
    return (" Environment: " + ", ".join(f"`{k}={v}`" for k, v in env.items()) + ".") if env else ""


def to_markdown(res: dict) -> str:
    arch = "channels " + ",".join(map(str, res["channels"]))
    if "hidden" in res:
        arch += f", hidden {res['hidden']}"
    lines = [
        f"**dtp-fast bench** on {res['device_name']} ({res['device']}, {res['cpu_count']} CPUs, "
        f"{res['torch_num_threads']} torch threads, load average {res.get('load_average')}), {res['date']}, "
        f"torch {res['versions']['torch']}, "
        f"dtp_fast {res['versions']['dtp_fast']}: {res['net']} width {res['width']:g} ({arch}), batch "
        f"{res['batch_size']}, {res['dtype']}, feedback iterations {','.join(map(str, res['iterations']))}; "
        f"median of {res['repeats']} runs after 1 warm-up; memory: {_METHOD_TEXT.get(res['peak_memory_method'])}."
        + environment_text(res),
        "",
        "| what | seconds (median) | speedup vs reference | peak memory MiB | memory vs reference |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        lines.append(f"| feedback phase, `{r['backend']}` | {_secs(r['feedback_seconds'])} | "
                     f"{_ratio(r['speedup_vs_reference'])} | {_mib(r['peak_memory_bytes'])} | "
                     f"{_ratio(r['memory_vs_reference'])} |")
    lines.append(f"| backprop step | {_secs(res['backprop_step_seconds'])} | - | "
                 f"{_mib(res.get('backprop_step_peak_memory_bytes'))} | - |")
    lines.append(f"| L-DRL step (feedback `{res['ldrl_step_backend']}` + forward) | "
                 f"{_secs(res['ldrl_step_seconds'])} | - | {_mib(res.get('ldrl_step_peak_memory_bytes'))} | - |")
    lines += ["", f"One L-DRL step with `{res['ldrl_step_backend']}` takes {_ratio(res['ldrl_vs_backprop'])} "
                  f"the time of one backprop step."]
    if any(r["per_layer"] for r in res["results"]):
        names = [r["backend"] for r in res["results"]]
        lines += ["", "Per layer (that layer's iterations only), seconds:", "",
                  "| layer | iterations | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for layer, k in zip(res["layers"], res["iterations"]):
            cells = []
            for r in res["results"]:
                t = r["per_layer"].get(layer)
                ref = res["results"][0]["per_layer"].get(layer)
                extra = f" ({ref / t:.2f}x)" if r["backend"] != "reference" and t and ref else ""
                cells.append(_secs(t) + extra)
            lines.append(f"| {layer} | {k} | " + " | ".join(cells) + " |")
    plan = res.get("planner")
    if plan:
        lines += ["", "Memory planner, per layer (MiB): one precomputed iteration's dh2 (held at the block's output "
                      "resolution; unpooled, as before) and everything it stores; what the layer holds for the "
                      "phase (the chain's tensors, the sparse chain's index lists; upper bounds); the iterations "
                      "it precomputes at once on a CPU (unless the memory budget caps them):", "",
                  "| layer | dh2 per iteration | dh2 unpooled | stored per iteration | held for the phase | "
                  "CPU chunk |",
                  "|---|---:|---:|---:|---:|---:|"]
        for layer, p in plan["layers"].items():
            lines.append(f"| {layer} | {_mib(p['dh2_bytes_per_iteration'])} | "
                         f"{_mib(p['dh2_unpooled_bytes_per_iteration'])} | {_mib(p['stored_bytes_per_iteration'])} | "
                         f"{_mib(p['fixed_bytes'])} | {p.get('cpu_chunk_iterations', '-')} |")
        lines += ["", f"One iteration of every layer needs {_mib(plan['minimum_budget_bytes'])} MiB; every "
                      f"iteration at once (one chunk, what a CUDA graph of the whole chain needs) "
                      f"{_mib(plan['whole_phase_budget_bytes'])} MiB."]
    return "\n".join(lines) + "\n"


def write_plot(res: dict, path) -> None:
    """A bar chart of the feedback phase per backend (speedup over each bar), with
    the backprop step as a reference bar."""
    try:
        import matplotlib
    except ImportError:
        raise BenchError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import io

    import matplotlib.pyplot as plt

    from .utils import _atomic

    names = [f"feedback\n{r['backend']}" for r in res["results"]] + ["backprop\nstep"]
    secs = [r["feedback_seconds"] for r in res["results"]] + [res["backprop_step_seconds"]]
    colors = ["tab:blue"] * len(res["results"]) + ["tab:gray"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(names) + 1.5), 4.2))
    bars = ax.bar(range(len(names)), secs, color=colors)
    if min(secs) > 0 and max(secs) / min(secs) > 50:
        ax.set_yscale("log")
    labels = [_ratio(r["speedup_vs_reference"]) for r in res["results"]]
    ref = res["results"][0]["feedback_seconds"]
    labels.append(_ratio(ref / res["backprop_step_seconds"]) if res["backprop_step_seconds"] > 0 else "")
    for bar, text, s in zip(bars, labels, secs):
        ax.annotate(f"{text}\n{s:.3g} s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("seconds per batch (median)")
    ax.set_title(f"{res['net']} width {res['width']:g}, batch {res['batch_size']}, {res['device']}: "
                 f"feedback phase\n(over each bar: reference feedback time / bar)", fontsize=9)
    ax.margins(y=0.2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic(path, lambda fh: fh.write(buf.getvalue()))
