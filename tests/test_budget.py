"""The feedback budget policy (issue 16): ``paper`` is today's behaviour bit for bit; ``adaptive``
decides per layer and batch from the weights alone, the same for every backend, across a resume and
on every rank; bad knobs are named."""
import json
import math

import pytest
import torch

import dtp_fast
from dtp_fast.api import make_run
from dtp_fast.cli import main
from dtp_fast.config import TrainConfig
from dtp_fast.feedback.budget import AdaptiveBudget
from helpers import assert_same_budget_state

# a float64 LeNet on digits with a short warm-up, so that shares move within a few batches
RUN = dict(preset="lenet", dataset="digits", algo="ldrl", dtype="float64", batch_size=16, limit_batches=6,
           epochs=2, progress=False, diagnostics=False, feedback_iters=[6, 4, 8])
ADAPTIVE = dict(feedback_budget="adaptive", budget_warmup=2, budget_floor=0.25)


def _record_plans(trainer):
    """Wrap the trainer's budget so that every batch's plan (iterations, lr per layer) is kept."""
    plans, plan = [], trainer.budget.plan

    def recording(net, hparams):
        out = plan(net, hparams)
        plans.append([(hp.iterations, hp.lr) for hp in out])
        return out
    trainer.budget.plan = recording
    return plans


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.net.state_dict().items()}


def test_paper_is_the_default_and_runs_the_configured_iterations():
    assert TrainConfig().feedback_budget == "paper" and TrainConfig().budget_policy() is None
    paper = make_run(**RUN)
    paper.fit()
    assert paper.budget is None
    spent = paper.history[-1]["feedback_iterations"]
    assert spent == {n: 6 * hp.iterations for n, hp in zip(paper.net.feedback_names, paper.fb_hparams)}


def test_adaptive_with_nothing_to_cut_is_the_paper_run_bit_for_bit():
    """With nothing to cut (floor 1, lr scale 1) the adaptive policy hands the backends the paper's settings, so the
    run is the paper run's to the bit: the policy adds no arithmetic to the training itself."""
    paper = make_run(**RUN)
    paper.fit()
    full = make_run(**RUN, **{**ADAPTIVE, "budget_floor": 1.0, "budget_lr_scale": 1.0})
    full.fit()
    a, b = _weights(paper), _weights(full)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adaptive_cuts_by_the_lr_scale_within_the_floor_and_counts_what_it_spent():
    trainer = make_run(**{**RUN, "feedback_iters": [12, 16, 20]}, **{**ADAPTIVE, "budget_warmup": 4}, budget_lr_scale=2.0)
    plans = _record_plans(trainer)
    trainer.fit()
    paper = [(hp.iterations, hp.lr) for hp in trainer.fb_hparams]
    assert plans[:4] == [paper] * 4                                      # the warm-up
    assert len({tuple(plan) for plan in plans[4:]}) > 1                  # the shares moved with the drift
    for plan in plans[4:]:
        for (k, lr), (p, base) in zip(plan, paper):
            assert max(1, math.ceil(0.25 * p / 2)) <= k <= math.ceil(p / 2)   # floor / lr_scale .. 1 / lr_scale
            assert lr == pytest.approx(2 * base)
    spent = sum(k for plan in plans for k, _ in plan)
    assert trainer.summary()["feedback_iterations"]["share_of_configured"] == spent / (12 * sum(p for p, _ in paper))
    last = trainer.history[-1]
    assert last["feedback_iterations"] == {n: sum(plan[i][0] for plan in plans[6:])
                                           for i, n in enumerate(trainer.net.feedback_names)}


def test_a_layer_gets_iterations_in_proportion_to_its_forward_drift():
    """The rule on a hand-moved network: the fastest drift so far is the reference; half of it halves the
    share, none falls to the floor, a non-finite weight gives the paper's budget back."""
    net = dtp_fast.lenet((1, 8, 8), 10, channels=(4, 8), hidden=16).double()
    hparams = TrainConfig(feedback_iters=[8, 8, 8], feedback_lr=0.1).feedback_config().resolve(net.feedback_names)
    budget = AdaptiveBudget(warmup=2, floor=0.25, lr_scale=2.0, smoothing=0.0)
    weights = [b.f_op.weight for b in net.block_list()[1:]]

    def move(*rel):        # scale each forward weight by 1 + rel: a relative drift of rel / (1 + rel)
        with torch.no_grad():
            for w, r in zip(weights, rel):
                w.mul_(1 + r)
        return budget.plan(net, hparams)

    paper = [(8, 0.1)] * 3
    assert [(hp.iterations, hp.lr) for hp in budget.plan(net, hparams)] == paper    # warm-up, nothing measured
    assert [(hp.iterations, hp.lr) for hp in move(0.02, 0.02, 0.02)] == paper       # warm-up: the first drift
    assert budget.ref == pytest.approx({n: 0.02 / 1.02 for n in net.feedback_names}, rel=1e-12)
    plan = move(0.01, 0.02, 0.0)     # half the reference's drift, all of it, none
    assert budget.last["conv_1"]["share"] == pytest.approx((0.01 / 1.01) / (0.02 / 1.02), rel=1e-9)
    assert [hp.iterations for hp in plan] == [3, 4, 1]     # ceil(8 x share / 2): 0.505, 1, the floor 0.25
    assert [hp.lr for hp in plan] == [pytest.approx(0.2)] * 3
    assert [hp.iterations for hp in move(0.08, 0.0, 0.0)] == [4, 1, 1]            # faster than ever: all of it
    assert budget.ref["conv_1"] == pytest.approx(0.08 / 1.08, rel=1e-12)          # ... and the new reference
    with torch.no_grad():
        weights[1].fill_(float("inf"))
    assert [(hp.iterations, hp.lr) for hp in budget.plan(net, hparams)][1] == (8, 0.1)
    state = budget.state_dict()
    assert state["batches"] == 5 and all(t.device.type == "cpu" for t in state["prev"].values())


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_adaptive_decisions_are_the_same_for_every_backend(backend):
    if backend == "cpp":
        from conftest import require_ext
        require_ext()
    ref = make_run(**RUN, **ADAPTIVE, backend="reference")
    ref_plans = _record_plans(ref)
    ref.fit()
    other = make_run(**RUN, **ADAPTIVE, backend=backend)
    plans = _record_plans(other)
    other.fit()
    assert [[k for k, _ in p] for p in plans] == [[k for k, _ in p] for p in ref_plans]
    assert len({tuple(k for k, _ in p) for p in plans}) > 1               # the decisions did vary
    a, b = _weights(ref), _weights(other)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12)


def test_adaptive_decisions_continue_identically_after_a_resume(tmp_path):
    straight = make_run(**RUN, **ADAPTIVE, out=tmp_path / "straight")
    straight.fit()
    part = make_run(**RUN, **ADAPTIVE, out=tmp_path / "part")
    part.fit(stop_after=1)       # as if killed after epoch 1
    resumed = make_run(**RUN, **ADAPTIVE, out=tmp_path / "part", resume=True)
    assert_same_budget_state(resumed.budget.state_dict(), part.budget.state_dict())
    resumed.fit()
    assert_same_budget_state(resumed.budget.state_dict(), straight.budget.state_dict())
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["feedback_iterations"] == \
        json.loads((tmp_path / "straight" / "summary.json").read_text())["feedback_iterations"]


def test_a_resume_without_budget_state_starts_the_policy_afresh(tmp_path):
    """A paper run continued as adaptive: the policy warms up from the resumed step."""
    make_run(**RUN, out=tmp_path / "run").fit(stop_after=1)
    resumed = make_run(**RUN, **ADAPTIVE, out=tmp_path / "run", resume=True)
    assert resumed.budget.batches == 0
    resumed.fit()
    assert resumed.budget.batches == 6


@pytest.mark.parametrize("settings, word", [
    (dict(feedback_budget="fast"), "feedback_budget"),
    (dict(feedback_budget="adaptive", algo="bp"), "applies to algo 'ldrl'"),
    (dict(budget_floor=0.0), "budget_floor"),
    (dict(budget_floor=1.5), "budget_floor"),
    (dict(budget_floor=float("nan")), "budget_floor"),
    (dict(budget_lr_scale=0.5), "budget_lr_scale"),
    (dict(budget_lr_scale=float("inf")), "budget_lr_scale"),
    (dict(budget_lr_scale="2"), "budget_lr_scale"),
    (dict(budget_warmup=-1), "budget_warmup"),
    (dict(budget_warmup=2.5), "budget_warmup"),
])
def test_bad_budget_settings_are_named(settings, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**settings)


def test_bad_budget_flags_get_one_line_errors(tmp_path, capsys):
    code = main(["train", "--preset", "lenet", "--feedback-budget", "adaptive", "--budget-floor", "0",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "budget_floor must be a number in (0, 1]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["train", "--feedback-budget", "cheap"])
    assert "invalid choice: 'cheap'" in capsys.readouterr().err


def test_budget_knobs_are_checked_by_the_policy_too():
    with pytest.raises(ValueError, match="smoothing"):
        AdaptiveBudget(smoothing=1.0)
    with pytest.raises(ValueError, match="warmup"):
        AdaptiveBudget(warmup=True)


def test_the_budget_sweep_writes_its_results(tmp_path):
    """benchmarks/budget_sweep.py (the README's digits numbers) at its smallest: one seed, one epoch."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "budget_sweep.py"
    spec = importlib.util.spec_from_file_location("budget_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    assert sweep.main(["--seeds", "0", "--epochs", "1", "--policies", "paper,adaptive", "--out", str(tmp_path)]) == 0
    (js,) = tmp_path.glob("*-budget-digits.json")
    rep = json.loads(js.read_text())
    assert {"command", "commit", "machine", "date"} <= set(rep["origin"])
    paper, adaptive = rep["policies"]
    assert paper["share"]["mean"] == 1.0
    assert 0.6 <= adaptive["share"]["mean"] < 0.95      # 45 batches: 31 at the full budget, then at most 14 of 20
    assert "| adaptive |" in js.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        sweep.main(["--policies", "cheap"])


def test_the_cli_trains_with_the_adaptive_budget_and_says_what_it_spent(tmp_path, capsys):
    assert main(["train", "--preset", "lenet", "--feedback-budget", "adaptive", "--budget-warmup", "1",
                 "--budget-floor", "0.5", "--epochs", "1", "--limit-batches", "4", "--batch-size", "16",
                 "--feedback-iters", "4", "--no-diagnostics", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    share = summary["feedback_iterations"]["share_of_configured"]
    assert 0.5 <= share < 1 and summary["config"]["feedback_budget"] == "adaptive"
    assert f"{100 * share:.0f}% of --feedback-iters on every batch (adaptive budget)" in out
