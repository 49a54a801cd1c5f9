"""``report.md``: the report's tables as markdown."""
from __future__ import annotations

from .runs import _layers

__all__ = ["to_markdown"]


def _pct(st: dict | None, key: str = "mean") -> str:
    return "-" if st is None or st.get(key) is None else f"{100 * st[key]:.2f}"


def _pct_pm(st: dict | None) -> str:
    if st is None:
        return "-"
    return f"{100 * st['mean']:.2f} ± " + ("n/a" if st["std"] is None else f"{100 * st['std']:.2f}")


def _num_pm(st: dict | None, fmt: str = ".1f") -> str:
    if st is None:
        return "-"
    return f"{st['mean']:{fmt}} ± " + ("n/a" if st["std"] is None else f"{st['std']:{fmt}}")


def _secs(st: dict | None) -> str:
    return "-" if st is None else f"{st['mean']:.3g}"


def _total_secs(st: dict | None) -> str:
    """Whole seconds with thousands separators from 100 s up (3,502), else 3 significant digits."""
    return "-" if st is None else f"{st['mean']:,.0f}" if st["mean"] >= 100 else f"{st['mean']:.3g}"


def _algo(g: dict) -> str:
    """The algo column: the algo, and the feedback budget when it is not the paper's."""
    budget = g.get("feedback_budget")
    return g["algo"] + (f" ({budget})" if budget not in (None, "paper") else "")


def _share(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _time_to_accuracy(groups: list[dict]) -> list[str]:
    lines = ["", "## Time to accuracy", "",
             "Totals over the whole run, mean over the seeds, compared with the paper-budget L-DRL group and the "
             "backprop group of the same preset and dataset (- where there is none).", "",
             "| preset | dataset | algo | seeds | test top-1 (%) | train s | feedback iterations | "
             "iterations vs paper L-DRL | time vs paper L-DRL | time vs backprop | s to backprop top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        t = g["time_to_accuracy"]
        its = "-" if g["feedback_iterations"] is None else f"{g['feedback_iterations']['mean']:,.0f}"
        mult = "-" if t["backprop_time_multiple"] is None else f"{t['backprop_time_multiple']:.2f}x"
        if t["reached_backprop_accuracy"] is None:
            reach = "-"
        elif t["reached_backprop_accuracy"]:
            reach = f"{t['seconds_to_backprop_accuracy']:.3g} (epoch {t['epoch_to_backprop_accuracy']})"
        else:
            reach = "not reached"
        lines.append(f"| {g['preset']} | {g['dataset']} | {_algo(g)} | {g['n_runs']} | "
                     f"{_pct_pm(g['test_accuracy'])} | {_total_secs(g['train_seconds'])} | {its} | "
                     f"{_share(t['feedback_iterations_share'])} | {_share(t['train_seconds_share'])} | {mult} | "
                     f"{reach} |")
    lines += ["", "Test top-1: after the last epoch, mean ± sample std over the seeds. Train s: training seconds "
              "of the whole run (no evaluation). Feedback iterations: the feedback-weight training iterations "
              "of the whole run, summed over the layers (none for backprop). Iterations and time vs paper "
              "L-DRL: the group's feedback iterations and training seconds as a share of those of the L-DRL "
              "group trained with the paper's fixed feedback budget. Time vs backprop: the group's training "
              "seconds as a multiple of backprop's. S to backprop top-1: the cumulative training seconds "
              "(mean over the seeds) after the first epoch at which the group's mean test top-1 reaches the "
              "backprop group's final mean test top-1, with that epoch; not reached if it never does."]
    return lines


def to_markdown(rep: dict) -> str:
    """The report as markdown (relative links to the figures)."""
    groups = rep["groups"]
    lines = [f"# {rep['title']}", "",
             f"{rep['n_runs']} run(s) in {len(groups)} group(s), grouped by (preset, dataset, algo, feedback "
             f"budget); the runs of a group are repeats with different seeds. An algo marked (adaptive) trained "
             f"its feedback weights with the adaptive budget (fewer feedback iterations for the layers whose "
             f"feedback weights stay aligned), the others with the paper's fixed number of feedback iterations "
             f"per batch. Accuracies are on the test split, in %, as mean ± sample standard deviation (ddof=1) "
             f"over the seeds (n/a with one seed). Written {rep['date']} "
             f"by dtp_fast {rep['dtp_fast_version']}.", "",
             "| preset | dataset | algo | backend | seeds | epochs | test top-1 (%) | test top-5 (%) | "
             "best top-1 (%) | s / epoch | images/s | feedback share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        share = "-" if g["algo"] == "bp" or g["feedback_share"] is None else \
            f"{100 * g['feedback_share']['mean']:.1f}%"
        ips = "-" if g["images_per_second"] is None else f"{g['images_per_second']['mean']:.0f}"
        lines.append(f"| {g['preset']} | {g['dataset']} | {_algo(g)} | {', '.join(g['backends'])} | "
                     f"{g['n_runs']} | {', '.join(map(str, g['epochs']))} | {_pct_pm(g['test_accuracy'])} | "
                     f"{_pct_pm(g['test_top5'])} | {_pct(g['best_test_accuracy'])} | "
                     f"{_secs(g['seconds_per_epoch'])} | {ips} | {share} |")
    lines += ["", "Best top-1: the best test accuracy over a run's epochs, mean over the seeds. s / epoch and "
              "images/s: training only (no evaluation), mean over the seeds. Feedback share: the part of the "
              "training time spent training the feedback weights (L-DRL and the other DTP variants)."]
    notes = []
    for g in groups:
        if g["duplicate_seeds"]:
            notes.append(f"- {g['label']}: several runs share seed(s) "
                         f"{', '.join(map(str, g['duplicate_seeds']))}.")
        if g["settings_differ"]:
            notes.append(f"- {g['label']}: the runs differ in " + "; ".join(
                f"`{k}` ({' / '.join(v)})" for k, v in g["settings_differ"].items()) + ".")
        if len(g["epochs"]) > 1:
            notes.append(f"- {g['label']}: the runs have different numbers of epochs "
                         f"({', '.join(map(str, g['epochs']))}).")
    if notes:
        lines += ["", "**Caution**, runs grouped together are not plain repeats:", *notes]
    if len(groups) > 1:
        lines += _time_to_accuracy(groups)

    ldrl = [g for g in groups if g["algo"] != "bp"]
    if ldrl:
        lines += ["", "## Feedback weight alignment (after the last epoch)", "",
                  "Angle between each feedback layer's weights G and its forward weights F transposed, their "
                  "relative distance |F^T - G| / |F^T|, and the angle between the DTP update and the backprop "
                  "gradient of the same layer's forward weights; mean ± sample std over the seeds.", "",
                  "| preset | dataset | algo | layer | angle(G, F^T) (deg) | distance | angle(DTP, BP) (deg) |",
                  "|---|---|---|---|---|---|---|"]
        for g in ldrl:
            layers = _layers([g["gradient_angle_deg"], g["alignment"]])
            if not layers:
                lines.append(f"| {g['preset']} | {g['dataset']} | {_algo(g)} | (no diagnostics: trained with "
                             f"diagnostics off) | - | - | - |")
            for layer in layers:
                a = g["alignment"].get(layer) or {}
                lines.append(f"| {g['preset']} | {g['dataset']} | {_algo(g)} | {layer} | "
                             f"{_num_pm(a.get('angle_deg'))} | "
                             f"{_num_pm(a.get('distance'), '.3f')} | "
                             f"{_num_pm(g['gradient_angle_deg'].get(layer))} |")
        lines += ["", "A layer without an angle(G, F^T) has no feedback layer G of its own: the first layer "
                  "(nothing is sent below it)" + (", and every layer with DRL's direct feedback from the output"
                                                 if any(g["algo"] == "drl" for g in ldrl) else "") + "."]

    lines += ["", "## Runs", "", "| group | seed | epochs | test top-1 (%) | backend | folder |",
              "|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['preset']} {r['dataset']} {_algo(r)} | {r['seed']} | {r['epochs']} | "
                     f"{100 * r['test_accuracy']:.2f} | {r['backend']} | [{r['path']}]({r['path']}/) |")
    if rep["figures"]:
        captions = {"accuracy.png": "Test top-1 accuracy (solid, min-max band over the seeds) and train "
                                    "accuracy (dashed) per epoch",
                    "loss.png": "Train loss (summed layer-local loss for the DTP variants, cross-entropy for backprop) and test "
                                "cross-entropy per epoch",
                    "alignment.png": "Angle between the feedback weights G and F transposed per epoch, per "
                                     "layer (the groups that train feedback weights)",
                    "time.png": "Training seconds per epoch: feedback vs forward phase",
                    "time_to_accuracy.png": "Test top-1 accuracy (mean over the seeds, min-max band) against the "
                                            "cumulative training seconds (all groups) and the cumulative "
                                            "feedback iterations (the groups that train feedback weights), both "
                                            "means over the seeds; dotted: backprop's final mean test top-1"}
        lines += ["", "## Figures", ""]
        for name in rep["figures"]:
            lines += [f"**{name}**: {captions.get(name, '')}.", "", f"![{name[:-4]}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"
