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

# a float64 LeNet on digits, short warm-up and a tight alarm so that shares shrink, alarms fire and
# both show up within a few batches
RUN = dict(preset="lenet", dataset="digits", algo="ldrl", dtype="float64", batch_size=16, limit_batches=6,
           epochs=2, progress=False, diagnostics=False, feedback_iters=[6, 4, 8])
ADAPTIVE = dict(feedback_budget="adaptive", budget_warmup=2, budget_floor=0.25, budget_alarm_deg=0.05)


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
    assert "feedback_alarms" not in paper.history[-1]


def test_adaptive_at_a_full_floor_is_the_paper_run_bit_for_bit():
    """With nothing to cut (floor 1) the adaptive policy hands the backends the paper's settings, so the
    run is the paper run's to the bit: the policy adds no arithmetic to the training itself."""
    paper = make_run(**RUN)
    paper.fit()
    full = make_run(**RUN, **{**ADAPTIVE, "budget_floor": 1.0})
    full.fit()
    a, b = _weights(paper), _weights(full)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adaptive_cuts_raises_the_lr_within_its_bound_and_records_alarms():
    trainer = make_run(**RUN, **ADAPTIVE, budget_lr_scale=2.0)
    plans = _record_plans(trainer)
    trainer.fit()
    paper = [(hp.iterations, hp.lr) for hp in trainer.fb_hparams]
    assert plans[:2] == [paper, paper]                                   # the warm-up
    assert any(k < p for plan in plans[2:] for (k, _), (p, _) in zip(plan, paper))
    for plan in plans:
        for (k, lr), (p, base) in zip(plan, paper):
            assert max(1, -(-p // 4)) <= k <= p                           # never below the floor's share
            assert lr == pytest.approx(base * min(p / k, 2.0))           # the step kept up to lr_scale
    spent = sum(k for plan in plans for k, _ in plan)
    assert trainer.summary()["feedback_iterations"]["share_of_configured"] == spent / (12 * sum(p for p, _ in paper))
    last = trainer.history[-1]
    assert last["feedback_iterations"] == {n: sum(plan[i][0] for plan in plans[6:])
                                           for i, n in enumerate(trainer.net.feedback_names)}
    assert set(last["feedback_alarms"]) == set(trainer.net.feedback_names)


def test_an_alarm_doubles_the_share_and_a_layer_the_full_budget_cannot_hold_moves_its_reference():
    net = dtp_fast.lenet((1, 8, 8), 10, channels=(4, 8), hidden=16).double()
    with torch.no_grad():                    # every G starts as F transposed: angle 0
        for block in net.block_list()[1:]:
            w, v = block.f_op.weight, block.g_op.weight
            v.copy_(w.t() if block.kind == "linear" else w)
    hparams = TrainConfig(feedback_iters=[8, 8, 8], feedback_lr=0.1).feedback_config().resolve(net.feedback_names)
    budget = AdaptiveBudget(warmup=1, floor=0.25, decay=0.5, alarm_deg=1.0, patience=2, lr_scale=2.0)
    assert [hp.iterations for hp in budget.plan(net, hparams)] == [8, 8, 8]     # warm-up
    assert [hp.iterations for hp in budget.plan(net, hparams)] == [4, 4, 4]     # no change: halved
    assert [hp.lr for hp in budget.plan(net, hparams)] == [0.2] * 3             # 2 of 8: the lr at most 2x
    g = net.block_list()[2].g_op.weight                                       # fc1's feedback weights
    with torch.no_grad():
        g.copy_(torch.randn_like(g) * g.norm() / g.numel() ** 0.5)           # its alignment slips
    ref = dict(budget.ref)
    plan = budget.plan(net, hparams)
    assert [hp.iterations for hp in plan] == [2, 4, 2] and budget.last["fc1"]["alarm"]
    assert [hp.iterations for hp in budget.plan(net, hparams)] == [2, 8, 2]     # still slipped: full budget
    budget.plan(net, hparams)
    budget.plan(net, hparams)                # two batches at the full budget (patience) and still far off:
    assert budget.ref["fc1"] > ref["fc1"] + 1     # the reference follows the running mean
    assert [budget.ref[n] for n in ("conv_1", "fc2")] == [ref["conv_1"], ref["fc2"]]   # the others keep theirs


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
    assert resumed.budget.state_dict() == part.budget.state_dict()
    resumed.fit()
    assert resumed.budget.state_dict() == straight.budget.state_dict()
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
    (dict(budget_warmup=-1), "budget_warmup"),
    (dict(budget_warmup=2.5), "budget_warmup"),
    (dict(budget_alarm_deg=0), "budget_alarm_deg"),
    (dict(budget_alarm_deg="9"), "budget_alarm_deg"),
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


def test_the_policy_reads_the_angles_the_diagnostics_report():
    from dtp_fast.diagnostics import weight_alignment
    from dtp_fast.feedback.budget import _angles

    net = dtp_fast.lenet((1, 8, 8), 10, channels=(4, 8), hidden=16)
    expected = [a["angle_deg"] for a in weight_alignment(net).values()]
    assert _angles(net) == pytest.approx(expected, abs=1e-9)
    with torch.no_grad():
        net.block_list()[1].g_op.weight.fill_(float("nan"))
    assert math.isnan(_angles(net)[0])


def test_budget_knobs_are_checked_by_the_policy_too():
    with pytest.raises(ValueError, match="decay"):
        AdaptiveBudget(decay=0)
    with pytest.raises(ValueError, match="patience"):
        AdaptiveBudget(patience=0)


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
    assert paper["share"]["mean"] == 1.0 and paper["runs"][0]["alarms"] == 0
    assert 0.5 <= adaptive["share"]["mean"] < 1.0            # 45 batches: 30 warm-up, then cuts to the floor
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
