"""The theory results beside the paper's values: markdown tables and PNG figures."""
from __future__ import annotations

__all__ = ["gmp_markdown", "jmc_markdown", "plot_gmp", "plot_jmc", "PAPER_GMP", "PAPER_GMP_STD", "PAPER_JMC"]

# The paper's values (seed means; L-DRL from the official repository's result files, the others read off Fig. 4.3
# and 4.2), for tables beside ours.
PAPER_GMP = {"ldrl": {"conv_0": 32.48, "conv_1": 6.90, "fc1": 2.62, "fc2": 0.03},
             "drl": {"conv_0": 85.0, "conv_1": 83.0, "fc1": 13.5, "fc2": 1.5},
             "symmetric": {"conv_0": 24.0, "conv_1": 2.3, "fc1": 0.0, "fc2": 0.0},
             "random": {"conv_0": 90.0, "conv_1": 90.0, "fc1": 90.0, "fc2": 0.0}}
PAPER_GMP_STD = {"ldrl": {"conv_0": 4.4, "conv_1": 0.6, "fc1": 0.1, "fc2": 0.0}}
PAPER_JMC = {"ldrl": "falls to 2-3 degrees by about 2,500-3,000 iterations", "drl": "plateaus near 17 degrees"}
_LABELS = {"ldrl": "L-DRL", "drl": "DRL", "random": "random", "symmetric": "symmetric"}


def gmp_markdown(result: dict) -> str:
    """A markdown table of a gmp result beside the paper's values (degrees, mean +- std over seeds)."""
    layers = list(next(iter(result["mean"].values())))
    n = len(result["seeds"])
    rows = [f"| method | {' | '.join(layers)} |", "|---|" + "---:|" * len(layers)]
    for method in result["mean"]:
        ours = [f"{result['mean'][method][l]:.2f} ± {result['std'][method][l]:.2f}" for l in layers]
        rows.append(f"| {_LABELS[method]}, ours ({n} seed{'s' if n > 1 else ''}) | {' | '.join(ours)} |")
        if method in PAPER_GMP:
            std = PAPER_GMP_STD.get(method)
            paper = [f"{PAPER_GMP[method][l]:g}" + (f" ± {std[l]:g}" if std else "") for l in layers]
            rows.append(f"| {_LABELS[method]}, paper | {' | '.join(paper)} |")
    return "\n".join(rows) + "\n"


def jmc_markdown(result: dict) -> str:
    """A markdown table of a jmc result: the seed-mean angle at a few iterations, where it settled, the paper."""
    steps = result["iterations"]
    marks = sorted({steps[0], *(s for s in (500, 1000, 2500, 3000) if s in steps), steps[-1]})
    rows = [f"| method | {' | '.join(f'it. {m}' for m in marks)} | settled at | paper |",
            "|---|" + "---:|" * (len(marks) + 1) + "---|"]
    for method in ("ldrl", "drl"):
        c = result[method]
        cells = [f"{c['angle_deg'][steps.index(m)]:.1f} ± {c['angle_std'][steps.index(m)]:.1f}" for m in marks]
        rows.append(f"| {_LABELS[method]} | {' | '.join(cells)} | {result['settled_at'][method]} | "
                    f"{PAPER_JMC[method]} |")
    return "\n".join(rows) + "\n"


def plot_jmc(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = result["iterations"]
    for method, label in (("ldrl", "L-DRL"), ("drl", "DRL")):
        curve = result[method]
        axes[0].plot(steps, curve["angle_deg"], label=label)
        if len(result["seeds"]) > 1:
            lo = [m - s for m, s in zip(curve["angle_deg"], curve["angle_std"])]
            hi = [m + s for m, s in zip(curve["angle_deg"], curve["angle_std"])]
            axes[0].fill_between(steps, lo, hi, alpha=0.2)
        axes[1].plot(steps, curve["distance"], label=label)
    axes[0].set_ylabel("angle(J_G, J_F^T) (degrees)")
    axes[1].set_ylabel("distance |J_G - J_F^T| / |J_F|")
    for ax in axes:
        ax.set_xlabel("feedback iterations")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Jacobian matching, LeNet's last layer ({result['dataset']}, {result['preset']} settings, "
                 f"{len(result['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gmp(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, std = result["mean"], result["std"]
    methods = list(mean)
    layers = list(mean[methods[0]])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for j, m in enumerate(methods):
        ax.bar([i + j * width for i in range(len(layers))], [mean[m][l] for l in layers], width,
               yerr=[std[m][l] for l in layers] if len(result["seeds"]) > 1 else None, capsize=2, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], layers)
    ax.set_ylabel("angle(DTP update, BP gradient) (degrees)")
    ax.set_title(f"Gradient matching, LeNet ({result['dataset']}, {result['preset']} settings, "
                 f"{result['iterations']} iterations, {len(result['seeds'])} seeds)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
