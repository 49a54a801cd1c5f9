"""dtp_fast.DTP (issue 13): DTP behind the user's own loss.backward() and torch.optim, equal to the
Trainer's step; eval does no feedback work; its state travels in state_dict; misuse is named."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dtp_fast
from dtp_fast import DTP, TrainConfig, Trainer
from helpers import assert_same_budget_state

SETTINGS = dict(beta=0.5, feedback_iters=[3, 2, 4], feedback_lr=[0.05, 0.1, 0.2], noise=[0.1, 0.05, 0.05],
                feedback_weight_decay=1e-3, seed=3)
OPT = dict(lr=0.05, momentum=0.9, weight_decay=1e-4)


def _sequential():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ELU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ELU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 12), nn.ELU(), nn.Linear(12, 10)).double()


def _batches(n, batch=5):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
@pytest.mark.parametrize("budget", ["paper", "adaptive"])
def test_a_user_loop_trains_the_trainers_weights(backend, budget):
    """Three batches through a plain loop (dtp(x), F.cross_entropy, loss.backward(), torch.optim.SGD) give
    the forward and feedback weights and momentum buffers of Trainer.train_step on the same batches and noise."""
    if backend == "cpp":
        from conftest import require_ext
        require_ext()
    extra = dict(feedback_budget=budget, budget_warmup=1) if budget == "adaptive" else {}
    dtp = DTP(_sequential(), (1, 8, 8), backend=backend, **SETTINGS, **extra)
    net = copy.deepcopy(dtp.net)
    trainer = Trainer(net, None, TrainConfig(algo="ldrl", dtype="float64", device="cpu", backend=backend, epochs=1,
                                             **SETTINGS, **extra, **OPT))
    opt = torch.optim.SGD(dtp.parameters(), **OPT)
    for x, y in _batches(3):
        opt.zero_grad()
        loss = F.cross_entropy(dtp(x), y)
        loss.backward()
        opt.step()
        trainer.train_step(x, y)
    assert dtp.step == trainer.step == 3
    _assert_same(trainer.net.state_dict(), dtp.net.state_dict())
    _assert_same(trainer.fb_state.buffers, dtp.fb_state.buffers)
    if budget == "adaptive":
        assert_same_budget_state(dtp.budget.state_dict(), trainer.budget.state_dict(), rtol=1e-9)


def test_parameters_are_the_forward_weights_and_eval_does_no_feedback_work():
    model = _sequential()
    dtp = DTP(model, (1, 8, 8), **SETTINGS)
    assert [id(p) for p in dtp.parameters()] == [id(p) for p in model.parameters()]   # the model's own modules
    assert len(list(dtp.named_parameters())) == len(list(model.parameters()))
    assert len(list(dtp.feedback_parameters())) > 0
    feedback = {k: v.clone() for k, v in dtp.net.state_dict().items()}
    x, y = _batches(1)[0]
    dtp.eval()
    out = dtp(x)
    torch.testing.assert_close(out, model(x))
    dtp.train()
    with torch.no_grad():
        dtp(x)
    assert dtp.step == 0 and all(torch.equal(v, dtp.net.state_dict()[k]) for k, v in feedback.items())
    logits = dtp(x)
    torch.testing.assert_close(logits, model(x))
    F.cross_entropy(logits, y).backward()
    assert dtp.step == 1 and all(p.grad is not None for p in dtp.parameters())
    assert not all(torch.equal(v, dtp.net.state_dict()[k]) for k, v in feedback.items())   # feedback trained


def test_state_dict_carries_the_feedback_state_and_the_step(tmp_path):
    dtp = DTP(_sequential(), (1, 8, 8), feedback_budget="adaptive", budget_warmup=1, **SETTINGS)
    opt = torch.optim.SGD(dtp.parameters(), **OPT)
    batches = _batches(4)
    for x, y in batches[:2]:
        opt.zero_grad()
        F.cross_entropy(dtp(x), y).backward()
        opt.step()
    torch.save({"dtp": dtp.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    other = DTP(_sequential(), (1, 8, 8), feedback_budget="adaptive", budget_warmup=1, **SETTINGS)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    other.load_state_dict(ckpt["dtp"])
    other_opt = torch.optim.SGD(other.parameters(), **OPT)
    other_opt.load_state_dict(ckpt["opt"])
    assert other.step == 2
    assert_same_budget_state(other.budget.state_dict(), dtp.budget.state_dict())
    for a, o, (x, y) in ((dtp, opt, batches[2]), (other, other_opt, batches[2])):
        o.zero_grad()
        F.cross_entropy(a(x), y).backward()
        o.step()
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in dtp.state_dict().items() if torch.is_tensor(v))


def test_misuse_gets_errors_that_name_the_fix():
    with pytest.raises(dtp_fast.UnsupportedLayerError, match="BatchNorm"):
        DTP(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), (4,))
    with pytest.raises(TypeError, match="in_shape"):
        DTP(_sequential())
    with pytest.raises(TypeError, match="does not take lr"):
        DTP(_sequential(), (1, 8, 8), lr=0.1)
    with pytest.raises(ValueError, match="feedback iterations has 2 value"):
        DTP(_sequential(), (1, 8, 8), feedback_iters=[1, 2])
    dtp = DTP(_sequential(), (1, 8, 8), **SETTINGS)
    x, y = _batches(1)[0]
    loss = F.cross_entropy(dtp(x), y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice on one forward"):
        loss.backward()
    dtp(x).sum()                      # a loss that never reaches backward ...
    with pytest.raises(RuntimeError, match="never got a gradient"):
        dtp(x)                        # ... is named at the next training forward
    dtp = DTP(_sequential(), (1, 8, 8), **SETTINGS)
    g = next(dtp.feedback_parameters())
    g.grad = torch.zeros_like(g)
    with pytest.raises(RuntimeError, match="build the optimiser from dtp.parameters"):
        dtp(x)
