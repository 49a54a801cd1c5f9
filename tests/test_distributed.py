"""Data-parallel training: 2 gloo processes on this machine (loopback) train the same weights as
one process on the concatenated batch, resume across rank counts, and fail clearly."""
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import traceback

import pytest
import torch

from dtp_fast.api import make_run
from dtp_fast.data import Loader, load_dataset
from dtp_fast.distributed import Distributed
from dtp_fast.utils import load_checkpoint

RUN = dict(preset="lenet", dataset="digits", dtype="float64", batch_size=8, limit_batches=3, progress=False,
           diagnostics=False, feedback_iters=[3, 2, 4], epochs=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, run, out, die_at_step, stop_after):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from dtp_fast.distributed import init_from_env

    try:
        init_from_env("cpu", timeout_minutes=1)
        run = dict(run)
        if isinstance(run.get("lr"), list):          # a per-rank setting (to test disagreement)
            run["lr"] = run["lr"][rank]
        if run.pop("seed_by_rank", False):   # each rank initialises its own network differently
            import dtp_fast

            torch.manual_seed(rank)
            ds = load_dataset("digits")
            net = dtp_fast.lenet(ds.in_shape, ds.num_classes, channels=(4, 8), hidden=16)
            config = dtp_fast.TrainConfig(**{k: v for k, v in run.items() if k not in ("preset", "dataset")})
            trainer = dtp_fast.Trainer(net, ds, config)
        else:
            trainer = make_run(**run)
        if die_at_step is not None and rank == 1:
            step = trainer.train_step

            def dying(*args, **kwargs):
                if trainer.step == die_at_step:
                    os._exit(1)
                return step(*args, **kwargs)
            trainer.train_step = dying
        trainer.fit(stop_after)
        if rank == 0:
            torch.save({"net": trainer.net.state_dict(), "feedback": trainer.fb_state.state_dict(),
                        "history": trainer.history}, out)
    except BaseException as err:  # noqa: BLE001 - reported to the test
        with open(f"{out}.err{rank}", "w") as fh:
            fh.write(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _launch(tmp_path, world, run, die_at_step=None, name="result.pt", stop_after=None):
    """Run ``make_run(**run).fit()`` on ``world`` processes; rank 0's result, and each rank's error text."""
    ctx = multiprocessing.get_context("spawn")
    out = str(tmp_path / name)
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, run, out, die_at_step, stop_after)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        if p.is_alive():
            p.kill()
            pytest.fail("a rank hung")
    errors = {}
    for r in range(world):
        path = f"{out}.err{r}"
        if os.path.exists(path):
            errors[r] = open(path).read()
    result = torch.load(out, weights_only=False) if os.path.exists(out) else None
    return result, errors


def _single(**kw):
    trainer = make_run(**{**RUN, **kw})
    trainer.fit()
    return {"net": trainer.net.state_dict(), "feedback": trainer.fb_state.state_dict(), "history": trainer.history}


def _assert_same_run(a, b):
    for k, v in a["net"].items():
        torch.testing.assert_close(b["net"][k], v, rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")
    for k, v in a["feedback"].items():
        torch.testing.assert_close(b["feedback"][k], v, rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["test_accuracy"] == ha["test_accuracy"]
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-9)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_two_ranks_train_the_weights_of_one_process(tmp_path, backend):
    if backend == "cpp":
        from conftest import require_ext
        require_ext()
    one = _single(backend=backend)
    two, errors = _launch(tmp_path, 2, {**RUN, "backend": backend})
    assert not errors, errors
    _assert_same_run(one, two)


def test_adaptive_feedback_budget_decides_alike_on_every_rank(tmp_path):
    """The adaptive budget decides from the weights, which every rank holds alike: 2 ranks spend the
    iterations of one process, batch by batch, and train its weights."""
    adaptive = dict(feedback_budget="adaptive", budget_warmup=1, budget_floor=0.25, epochs=2)
    one = _single(**adaptive)
    two, errors = _launch(tmp_path, 2, {**RUN, **adaptive})
    assert not errors, errors
    _assert_same_run(one, two)
    spent = [h["feedback_iterations"] for h in one["history"]]
    assert [h["feedback_iterations"] for h in two["history"]] == spent
    assert spent[-1] != {n: 3 * k for n, k in zip(("conv_1", "fc1", "fc2"), RUN["feedback_iters"])}   # it did cut


def test_resume_with_a_different_number_of_ranks(tmp_path):
    straight = _single(epochs=2, out=tmp_path / "straight")
    _, errors = _launch(tmp_path, 2, {**RUN, "epochs": 2, "out": str(tmp_path / "run")}, stop_after=1)
    assert not errors, errors
    resumed = _single(epochs=2, out=tmp_path / "run", resume=True)      # 2 ranks, then 1 process
    _assert_same_run(straight, resumed)
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_bad_world_size_disagreeing_ranks_and_a_dying_rank(tmp_path):
    _, errors = _launch(tmp_path, 2, {**RUN, "batch_size": 7}, name="odd.pt")
    assert set(errors) == {0, 1} and all("not divisible by the 2 ranks" in e for e in errors.values()), errors
    _, errors = _launch(tmp_path, 2, {**RUN, "lr": [0.05, 0.06]}, name="disagree.pt")
    assert all("disagree" in e and "lr: rank 0 has 0.05, rank 1 has 0.06" in e for e in errors.values()), errors
    # rank 1 dies in epoch 2 (steps 3..5): rank 0 stops with a clear message, epoch 1's checkpoint intact
    run = {**RUN, "epochs": 3, "out": str(tmp_path / "dies")}
    _, errors = _launch(tmp_path, 2, run, die_at_step=4, name="dies.pt")
    assert list(errors) == [0], errors
    assert "DistributedError" in errors[0] and "another rank has probably stopped" in errors[0]
    assert "after epoch 1) is intact: restart every rank with --resume" in errors[0]
    ckpt = load_checkpoint(tmp_path / "dies" / "checkpoint.pt")
    assert ckpt["epoch"] == 1


def test_shards_tile_every_batch_and_a_tiny_last_batch_is_skipped():
    ds = load_dataset("digits")
    n = Loader(ds, "train", 8).num_samples
    bs = n % 8 + 1 if n % 8 else 9   # a final partial batch of n % bs rows
    for world in (1, 2, 3):
        shards = [Loader(ds, "train", bs, shard=(r, world)) for r in range(world)]
        whole = Loader(ds, "train", bs)
        rows = [torch.cat([x for x, _ in parts]) for parts in zip(*shards)]
        expect = [x for x, _ in whole]
        if 0 < n % bs < world:
            expect = expect[:-1]
        assert len(rows) == len(expect) == len(shards[0])
        for a, b in zip(rows, expect):
            assert torch.equal(a, b)
    assert Distributed(1, 3).shard(8) == (2, 5)
    with pytest.raises(ValueError, match="rank 3 is outside a world of 2"):
        Distributed(3, 2)


def test_torchrun_launches_dtp_fast_train(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "dtp_fast.cli", "train", "--preset", "lenet", "--dataset", "digits", "--epochs", "1", "--set", "limit_batches=2",
           "--batch-size", "8", "--out", str(out), "--set", "progress=false", "--set", "diagnostics=false",
           "--set", "feedback_iters=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["steps"] == 2 and (out / "checkpoint.pt").exists()


def test_scaling_reports_efficiency_and_communication(tmp_path):
    from dtp_fast.cli import main

    out = tmp_path / "scaling.json"
    assert main(["scaling", "--ranks", "1,2", "--preset", "lenet", "--batch-per-rank", "4", "--batches", "2",
                 "--set", "feedback_iters=2", "--json", str(out), "--markdown", str(tmp_path / "s.md")]) == 0
    res = json.loads(out.read_text())
    one, two = res["results"]
    assert (one["ranks"], two["ranks"], two["global_batch"]) == (1, 2, 8)
    assert one["efficiency"] == 1.0 and 0 < two["efficiency"] and two["comm_seconds"] > 0 == one["comm_seconds"]
    assert "| 2 | 8 |" in (tmp_path / "s.md").read_text()


def test_empty_shards_for_evaluation():
    ds = load_dataset("digits")
    n = Loader(ds, "test", 8).num_samples
    bs = n - 1 if n % 2 else n - 2          # a final batch of 1 or 2 rows, over 3 ranks
    shards = [Loader(ds, "test", bs, shard=(r, 3), empty_shards=True) for r in range(3)]
    sizes = [[len(y) for _, y in loader] for loader in shards]
    assert all(len(s) == 2 for s in sizes) and sum(s[1] for s in sizes) == n - bs and 0 in [s[1] for s in sizes]


def test_every_rank_starts_from_rank_0s_weights(tmp_path):
    import dtp_fast

    run = {**RUN, "seed_by_rank": True}
    two, errors = _launch(tmp_path, 2, run)
    assert not errors, errors
    torch.manual_seed(0)
    ds = load_dataset("digits")
    net = dtp_fast.lenet(ds.in_shape, ds.num_classes, channels=(4, 8), hidden=16)
    config = dtp_fast.TrainConfig(**{k: v for k, v in RUN.items() if k not in ("preset", "dataset")})
    trainer = dtp_fast.Trainer(net, ds, config)
    trainer.fit()
    _assert_same_run({"net": trainer.net.state_dict(), "feedback": trainer.fb_state.state_dict(),
                      "history": trainer.history}, two)
