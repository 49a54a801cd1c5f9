"""The report's PNG figures (matplotlib, imported only when they are drawn)."""
from __future__ import annotations

import io
from pathlib import Path

from .runs import ReportError, _along

__all__ = ["FIGURES", "write_figures", "require_matplotlib"]

FIGURES = ("accuracy.png", "loss.png", "alignment.png", "time.png", "time_to_accuracy.png")


def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("the figures need matplotlib, which is not installed: pip install matplotlib "
                          "(or pass --no-plots for report.md and report.json only)") from None
    return Figure, FigureCanvasAgg


def _save(fig, canvas_cls, path: Path) -> None:
    from ..utils import _atomic

    canvas_cls(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _atomic(path, lambda fh: fh.write(buf.getvalue()))


def _color(i: int):
    return f"C{i % 10}"


def _band(ax, c: dict, color, scale=1.0, label=None, style="-", band=True, x=None):
    """Curve ``c``'s mean, with its min-max band, against the epochs (or against ``x``)."""
    from matplotlib.ticker import MaxNLocator

    if x is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        x = c["epoch"]
    ax.plot(x, [scale * v for v in c["mean"]], style, color=color, label=label, marker="o" if len(x) < 3 else None,
            markersize=3)
    if band and any(n > 1 for n in c["n"]):
        ax.fill_between(x, [scale * v for v in c["min"]], [scale * v for v in c["max"]], color=color, alpha=0.18,
                        linewidth=0)


def write_figures(groups: list[dict], out: Path) -> list[str]:
    """Draw the figures into ``out``; returns the file names written."""
    Figure, Canvas = require_matplotlib()
    written = []

    def save(fig, name: str) -> None:
        _save(fig, Canvas, out / name)
        written.append(name)

    def legend_label(g):
        return f"{g['label']} ({g['n_runs']} seed{'s' if g['n_runs'] != 1 else ''})"

    # accuracy
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        c = g["curves"]
        if "test_accuracy" in c:
            _band(ax, c["test_accuracy"], _color(i), 100, f"{legend_label(g)}: test")
        if "train_accuracy" in c:
            _band(ax, c["train_accuracy"], _color(i), 100, f"{legend_label(g)}: train", style="--", band=False)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Top-1 accuracy (test solid with min-max band over seeds, train dashed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "accuracy.png")

    # loss
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2)
    for i, g in enumerate(groups):
        c = g["curves"]
        if "train_loss" in c:
            _band(axes[0], c["train_loss"], _color(i), label=legend_label(g))
        if "test_loss" in c:
            _band(axes[1], c["test_loss"], _color(i), label=legend_label(g))
    axes[0].set_title("train loss (DTP variants: layer-local loss; backprop: cross-entropy)", fontsize=9)
    axes[1].set_title("test cross-entropy", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "loss.png")

    # alignment
    aligned = [(i, g) for i, g in enumerate(groups) if g["algo"] != "bp" and g["curves"].get("alignment_angle_deg")]
    if aligned:
        fig = Figure(figsize=(5.2 * len(aligned), 4.2))
        axes = fig.subplots(1, len(aligned), squeeze=False)[0]
        for ax, (_, g) in zip(axes, aligned):
            for j, (layer, c) in enumerate(g["curves"]["alignment_angle_deg"].items()):
                _band(ax, c, _color(j), label=layer)
            ax.set_title(f"{legend_label(g)}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("angle(G, F^T) (deg)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Feedback weight alignment per layer (mean, min-max band over seeds)", fontsize=10)
        save(fig, "alignment.png")

    # time
    fig = Figure(figsize=(max(5.0, 1.3 * len(groups) + 2.5), 4.5))
    ax = fig.add_subplot()
    x = list(range(len(groups)))

    def mean(st):
        return st["mean"] if st else 0.0

    fb = [mean(g["feedback_seconds_per_epoch"]) for g in groups]
    fw = [mean(g["forward_seconds_per_epoch"]) for g in groups]
    other = [max(0.0, mean(g["seconds_per_epoch"]) - a - b) for g, a, b in zip(groups, fb, fw)]
    ax.bar(x, fb, color="tab:orange", label="feedback training")
    ax.bar(x, fw, bottom=fb, color="tab:blue", label="forward (+ backward, update)")
    ax.bar(x, other, bottom=[a + b for a, b in zip(fb, fw)], color="lightgray", label="other (data, ...)")
    for xi, a, b, o in zip(x, fb, fw, other):
        ax.annotate(f"{a + b + o:.3g} s", (xi, a + b + o), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels([g["label"].replace(" ", "\n", 2) for g in groups], fontsize=8)
    ax.set_ylabel("training seconds per epoch (mean over seeds)")
    ax.set_title("Time per epoch: feedback vs forward phase", fontsize=10)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    save(fig, "time.png")

    # time to accuracy: test accuracy against the cumulative training seconds and feedback iterations
    panels = [(k, xlabel, [(i, g) for i, g in enumerate(groups) if "test_accuracy" in g["curves"]
                           and k in g["curves"]])
              for k, xlabel in (("cumulative_train_seconds", "training seconds (cumulative, mean over seeds)"),
                                ("cumulative_feedback_iterations",
                                 "feedback iterations (cumulative, mean over seeds)"))]
    panels = [p for p in panels if p[2]]
    if panels:
        fig = Figure(figsize=(5.2 * len(panels), 4.5))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (key, xlabel, drawn) in zip(axes, panels):
            for i, g in drawn:
                c = _along(g["curves"]["test_accuracy"], g["curves"][key])
                if c is not None:
                    _band(ax, c, _color(i), 100, legend_label(g), x=c["x"])
            for i, g in enumerate(groups):
                if g["algo"] == "bp" and g["test_accuracy"] is not None:
                    ax.axhline(100 * g["test_accuracy"]["mean"], color=_color(i), linestyle=":", linewidth=1)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Time to accuracy: test top-1 (mean, min-max band over seeds; dotted: backprop's final)",
                     fontsize=10)
        save(fig, "time_to_accuracy.png")
    return written
