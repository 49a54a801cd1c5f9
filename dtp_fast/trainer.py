"""The training loop shared by L-DRL (DTP) and the backprop baseline."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import Dataset, Loader
from .data.torch_data import TorchLoader, is_torch_source
from .diagnostics import gradient_alignment, weight_alignment
from .distributed import Distributed, DistributedError, current
from .dtp import bp_loss, dtp_loss
from .family import TARGET_RULES, ensure_direct_feedback, train_family_feedback
from .feedback import FeedbackState, resolve_backend, train_feedback
from .noise import CounterNoise, NoiseSource
from .utils import (CheckpointError, Stopwatch, atomic_save, atomic_write_json, atomic_write_text, load_checkpoint,
                    origin, resolve_device, versions)

__all__ = ["TrainConfig", "Trainer", "NonFiniteLossError", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def _data_name(dataset) -> str:
    """A dtp_fast data set's name, else the class of a torch.utils.data source (DataLoader: its data set's)."""
    if isinstance(dataset, Dataset):
        return dataset.name
    return type(getattr(dataset, "dataset", dataset)).__name__


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and no checkpoint was written."""


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())


class Trainer:
    """Trains a :class:`~dtp_fast.DTPNet` with L-DRL/DTP or backprop.

    Args:
        net: the network (forward and feedback blocks).
        dataset: a :class:`~dtp_fast.data.Dataset`; or a standard ``torch.utils.data``
            ``DataLoader`` or map-style ``Dataset`` of the training split (then ``test``
            gives the test split, the same way; see :class:`~dtp_fast.data.torch_data.TorchLoader`;
            one process only); None for a trainer driven batch by batch through
            :meth:`train_step` (then :meth:`fit`, :meth:`evaluate` and :meth:`diagnostics`
            are unavailable).
        config: a :class:`TrainConfig`.
        out: a folder for ``metrics.jsonl``, ``summary.json`` and the
            checkpoint (optional).
        resume: continue from ``out/checkpoint.pt``.
        noise: override the noise source (default: counter-based, from the seed).
        info: extra fields for the summary (preset, data set name, ...).
        dist: this process's place in a data-parallel run (default: the
            initialised ``torch.distributed`` process group, if any, else one
            process). ``config.batch_size`` is the global batch; every rank
            trains on its slice and the result equals one process's.
    """

    def __init__(self, net, dataset: Dataset | None = None, config: TrainConfig | None = None, *, out=None,
                 resume: bool = False, noise: NoiseSource | None = None, info: dict | None = None,
                 dist: Distributed | None = None, test=None):
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got a {type(config).__name__}: build one with "
                            f"TrainConfig(**settings)")
        self.config = config = config or TrainConfig()
        config.validate()
        self.dist = dist if dist is not None else current()
        if config.batch_size % self.dist.world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.dist.world} ranks: the "
                             f"batch size is the global batch, split evenly over the ranks; use a multiple of "
                             f"{self.dist.world}")
        self.device = resolve_device(config.device)
        self.dtype = getattr(torch, config.dtype)
        torch_data = dataset is not None and is_torch_source(dataset)
        if torch_data and self.dist.world > 1:
            raise ValueError("torch.utils.data sources are not supported in data-parallel runs: their order is not "
                             "split by global sample index; use a dtp_fast data set (dtp_fast.load_dataset), which is")
        if torch_data and test is None:
            raise ValueError("training from a torch.utils.data source needs test=..., the test split (a DataLoader "
                             "or data set), for the evaluation and diagnostics after every epoch")
        if test is not None and not torch_data:
            raise ValueError("test= goes with a torch.utils.data training source; a dtp_fast data set brings its own "
                             "test split")
        if dataset is not None and not torch_data and tuple(dataset.in_shape) != tuple(net.in_shape):
            raise ValueError(f"the data set's images have shape {tuple(dataset.in_shape)} but the network expects "
                             f"{tuple(net.in_shape)}: build the network for this data set")
        if dataset is not None and not torch_data and dataset.num_classes != net.num_classes:
            raise ValueError(f"the data set has {dataset.num_classes} classes but the network outputs "
                             f"{net.num_classes}")
        self.net = net.to(device=self.device, dtype=self.dtype)
        self.dataset = dataset
        self.info = dict(info or {})
        self.out = Path(out) if out is not None else None
        self.backend = self.fb_hparams = None
        self.rule = TARGET_RULES.get(config.algo)
        if config.algo in ("ldrl", "parallel"):
            self.backend = resolve_backend(config.backend, self.device)
        if config.algo == "drl":
            ensure_direct_feedback(net)
        if config.algo != "bp":
            fb = config.feedback_config()
            if config.algo == "parallel":  # one iteration per batch, the layer's iterations as noise samples
                iters = fb.resolve(net.feedback_names)
                fb.iterations, fb.samples = 1, max(config.feedback_samples, max(h.iterations for h in iters))
            self.fb_hparams = fb.resolve(net.feedback_names)
        self._origin = origin()       # the code this process runs: its commit as it starts, not as it ends
        self.fb_state = FeedbackState()
        self.budget = config.budget_policy()     # None: the paper's budget
        self.memory_budget = ("default" if config.feedback_memory is None
                              else int(config.feedback_memory * 2**20))
        self.noise = noise or CounterNoise(config.seed)
        self.optimizer = torch.optim.SGD(list(net.forward_parameters()), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.t_max or config.epochs, eta_min=config.eta_min)
        self.train_loader = self.test_loader = self.diag_loader = None
        if torch_data:
            kw = dict(device=self.device, dtype=self.dtype, seed=config.seed, in_shape=net.in_shape,
                      num_classes=net.num_classes)
            self.train_loader = TorchLoader(dataset, config.batch_size, limit_batches=config.limit_batches,
                                            what="the training data", **kw)
            self.test_loader = TorchLoader(test, max(config.batch_size, 256), shuffle=False, what="the test data",
                                           **kw)
            self.diag_loader = TorchLoader(test, 256, shuffle=False, what="the test data", **kw)
        elif dataset is not None:
            loader_kw = dict(device=self.device, dtype=self.dtype, seed=config.seed)
            shard = (self.dist.rank, self.dist.world)
            self.train_loader = Loader(dataset, "train", config.batch_size, augment=config.augment,
                                       limit_batches=config.limit_batches, shard=shard, **loader_kw)
            self.test_loader = Loader(dataset, "test", max(config.batch_size, 256), shard=shard, empty_shards=True,
                                      **loader_kw)
            self.diag_loader = Loader(dataset, "test", 256, **loader_kw)   # the same batch on every rank
        self.epoch = 0          # completed epochs
        self.step = 0           # completed training steps (batches)
        self.history: list[dict] = []
        self.totals = {"train_seconds": 0.0, "feedback_seconds": 0.0, "forward_seconds": 0.0, "comm_seconds": 0.0,
                       "images": 0}
        if resume:
            self._resume()
        elif self.out is not None and (self.out / CHECKPOINT_NAME).exists():
            raise FileExistsError(f"{self.out} already holds a run ({CHECKPOINT_NAME}); pass resume=True "
                                  f"(--resume) to continue it, or choose another output folder")
        elif self.out is not None and (left := [n for n in ("metrics.jsonl", "summary.json")
                                                if (self.out / n).exists()]):
            raise FileExistsError(f"{self.out} holds {' and '.join(left)} of an earlier run that saved no checkpoint "
                                  f"(it stopped before its first one): delete {' and '.join(left)} to start afresh "
                                  f"there, or choose another output folder")
        self.dist.check_same("run", self._description())
        # like DistributedDataParallel: every rank starts from rank 0's weights
        self.dist.broadcast_([t for t in self.net.state_dict().values() if t.is_floating_point()])

    def _description(self) -> dict:
        """What every rank of a data-parallel run must agree on."""
        config = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in ("device", "progress")}
        out = {**config, "network": [(n, tuple(p.shape)) for n, p in self.net.named_parameters()],
                "epoch": self.epoch, "step": self.step}
        if self.dataset is not None:
            out.update(dataset=_data_name(self.dataset), train_size=self.train_loader.num_samples,
                       test_size=self.test_loader.num_samples)
        return out

    def _need_data(self, what: str) -> None:
        if self.dataset is None:
            raise ValueError(f"Trainer.{what}() needs a data set: this trainer was built with dataset=None; pass "
                             f"one (Trainer(net, dataset, config)), or drive it batch by batch with train_step(x, y)")
    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out / CHECKPOINT_NAME if self.out is not None else None

    def state_dict(self) -> dict:
        return {
            "format": 1, "epoch": self.epoch, "step": self.step,
            "config": dataclasses.asdict(self.config), "info": self.info,
            "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "feedback_state": self.fb_state.state_dict(),
            "budget": self.budget.state_dict() if self.budget is not None else None,
            "history": self.history, "totals": self.totals,
        }

    def save_checkpoint(self) -> None:
        """Write ``out/checkpoint.pt`` atomically: a failed write (a full disk) leaves the previous one whole and
        raises an OSError that says so."""
        if self.out is not None and self.dist.is_main:
            try:
                atomic_save(self.state_dict(), self.checkpoint_path)
            except (OSError, RuntimeError) as err:
                free = shutil.disk_usage(self.out).free / 2**20
                kept = (f"the checkpoint of epoch {self.saved_epoch} is intact"
                        if getattr(self, "saved_epoch", None) else "no earlier checkpoint exists")
                raise OSError(f"could not write the checkpoint of epoch {self.epoch} to {self.checkpoint_path} "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__}; {free:.0f} MiB "
                              f"free there): {kept}; free space or fix the folder, then continue with --resume"
                              ) from None
        self.saved_epoch = self.epoch

    def _resume(self) -> None:
        path = self.checkpoint_path
        if path is None:
            raise ValueError("resume needs an output folder that holds a checkpoint")
        if not path.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
        if self.dist.is_main:   # what a process killed while writing the checkpoint left behind
            for stale in self.out.glob(f".{CHECKPOINT_NAME}.*.tmp"):
                stale.unlink(missing_ok=True)
        try:
            ckpt = load_checkpoint(path, map_location=self.device)
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume: {err}") from None
        if ckpt.get("config", {}).get("algo") != self.config.algo:
            raise ValueError(f"cannot resume: {path} was trained with algo={ckpt['config'].get('algo')!r}, "
                             f"not {self.config.algo!r}")
        try:
            self.net.load_state_dict(ckpt["net"])
        except RuntimeError as err:
            raise ValueError(f"cannot resume: {path} was written for a different network: {err}") from err
        changed = {k: (v, getattr(self.config, k)) for k, v in ckpt["config"].items()
                   if k not in ("epochs", "progress", "device", "backend") and getattr(self.config, k, v) != v}
        if changed:
            warnings.warn("resuming with settings that differ from the checkpoint's: "
                          + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self._apply_optimizer_settings()
        self.fb_state.load_state_dict(ckpt["feedback_state"])
        if self.budget is not None and ckpt.get("budget") is not None:
            self.budget.load_state_dict(ckpt["budget"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.saved_epoch = self.epoch
        self.history, self.totals = list(ckpt["history"]), {**self.totals, **ckpt["totals"]}
        # metrics written after the checkpoint (an interrupted epoch) are dropped
        metrics = self.out / "metrics.jsonl"
        if metrics.exists() and self.dist.is_main:
            lines = [line for line in metrics.read_text().splitlines() if line.strip()]
            keep = [line for line in lines if json.loads(line).get("epoch", 0) <= self.epoch]
            if keep != lines:   # rewritten atomically, and only when there is something to drop
                atomic_write_text("".join(line + "\n" for line in keep), metrics)

    def _apply_optimizer_settings(self) -> None:
        """After a resume: the run's settings replace those the checkpoint's optimizer and scheduler hold
        (learning rate, momentum, weight decay, the cosine's period and floor), from the resumed epoch on;
        the momentum buffers and the schedule's position are kept."""
        cfg, sched = self.config, self.scheduler
        for group in self.optimizer.param_groups:
            group.update(momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        schedule = (cfg.t_max or cfg.epochs, cfg.eta_min, [cfg.lr] * len(sched.base_lrs))
        if schedule == (sched.T_max, sched.eta_min, sched.base_lrs):
            return      # the schedule as saved: its learning rate untouched (a resume stays bit-identical)
        sched.T_max, sched.eta_min, sched.base_lrs = schedule
        for group in self.optimizer.param_groups:
            group["initial_lr"] = cfg.lr
            group["lr"] = cfg.eta_min + (cfg.lr - cfg.eta_min) * (
                1 + math.cos(math.pi * min(sched.last_epoch, sched.T_max) / sched.T_max)) / 2
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # ------------------------------------------------------------------ steps
    def _check_finite(self, value: torch.Tensor | float, what: str, batch: int) -> None:
        value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(value):
            last = (f"the last good checkpoint ({self.checkpoint_path}, after epoch {self.epoch}) is intact"
                    if self.checkpoint_path is not None and self.checkpoint_path.exists()
                    else "no checkpoint was written")
            raise NonFiniteLossError(
                f"{what} is {float(value)} at epoch {self.epoch + 1}, batch {batch + 1} (step {self.step}); "
                f"training stopped and {last}. Lower the learning rates (lr, feedback_lr) or the noise.")

    def train_step(self, x: torch.Tensor, y: torch.Tensor, watch: Stopwatch | None = None, batch: int = 0,
                   offset: int = 0, weight: float = 1.0) -> dict:
        """One training step on a batch ``x`` (images, moved to the trainer's device and dtype) with
        integer labels ``y``: for L-DRL the feedback phase, then the DTP update of the forward
        weights. Returns ``{"loss", "correct", "feedback": {layer: {"iterations", "loss"}}}``.
        The step counter (part of the noise key) advances by one.

        ``watch``: a :class:`~dtp_fast.utils.Stopwatch` that accumulates the feedback and
        forward seconds (optional); ``batch``: the batch's index in the epoch (for error
        messages).

        Data-parallel runs: ``x, y`` are this rank's rows ``offset ..`` of the global batch,
        ``weight`` their share of it (rows / global rows); gradients and losses are
        averaged over the global batch.
        """
        if watch is None:
            watch = Stopwatch(self.device, sync=False)
        x = x.to(self.device, self.dtype)
        y = y.to(self.device)
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        stats = {}
        reduce = (lambda ts: self.dist.reduce_weighted_(ts, weight, async_op=True)) if self.dist.enabled else None
        if self.config.algo != "bp":
            with watch("forward"):
                acts, switches = self.net.activations(x, detach_inputs=True)
            with watch("feedback"), torch.no_grad():
                if self.backend is not None:
                    hparams = self.fb_hparams if self.budget is None else self.budget.plan(self.net, self.fb_hparams)
                    stats = train_feedback(self.net, acts, switches, hparams, self.fb_state, self.noise,
                                           self.step, backend=self.backend, report="last",
                                           memory_budget=self.memory_budget, sample_offset=offset, reduce=reduce)
                else:
                    stats = train_family_feedback(self.config.algo, self.net, [a.detach() for a in acts], switches,
                                                  self.fb_hparams, self.fb_state, self.noise, self.step,
                                                  sample_offset=offset, reduce=reduce)
            for name, s in stats.items():
                if s["loss"] is not None:
                    self._check_finite(s["loss"], f"the feedback loss of layer {name!r}", batch)
            what = "the DTP loss"
            with watch("forward"):
                loss, logits = dtp_loss(self.net, x, y, self.config.beta, acts, switches, self.rule)
        else:
            what = "the cross-entropy loss"
            with watch("forward"):
                loss, logits = bp_loss(self.net, x, y)
        with watch("forward"):
            loss.backward()
            loss = loss.detach()
            if reduce is not None:  # one bucket: the forward gradients and the loss
                reduce([p.grad for p in self.net.forward_parameters() if p.grad is not None] + [loss])()
            self._check_finite(loss, what, batch)
            self.optimizer.step()
        self.step += 1
        return {"loss": float(loss), "correct": int((logits.argmax(1) == y).sum()), "feedback": stats}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Top-1 (and top-5 with more than 5 classes) accuracy and mean cross-entropy on the test split
        (data-parallel runs: each rank evaluates its slice, the counts are summed)."""
        self._need_data("evaluate")
        self.net.eval()
        n = correct = correct5 = 0
        loss = 0.0
        for x, y in self.test_loader:
            if not len(y):    # a rank's empty slice of a final batch smaller than the number of ranks
                continue
            logits = self.net(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += _topk_correct(logits, y, 1)
            correct5 += _topk_correct(logits, y, 5)
            n += len(y)
        loss, correct, correct5, n = self.dist.sum_([loss, correct, correct5, n])
        out = {"test_accuracy": correct / n, "test_loss": loss / n}
        if self.net.num_classes > 5:
            out["test_top5"] = correct5 / n
        return out

    def diagnostics(self) -> dict:
        """Weight alignment of the feedback layers and the DTP/backprop gradient angles on a test batch."""
        self._need_data("diagnostics")
        x, y = next(iter(self.diag_loader))
        out = {"alignment": weight_alignment(self.net) if self.rule in ("difference", "tp") else {}}
        out["gradient_angle_deg"] = gradient_alignment(self.net, x, y, rule=self.rule or "difference")
        return out

    # ------------------------------------------------------------------ loop
    def train_epoch(self) -> dict:
        from tqdm.auto import tqdm

        self._need_data("train_epoch")
        cfg = self.config
        self.train_loader.set_epoch(self.epoch)
        watch = Stopwatch(self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        n = correct = 0
        loss_sum = 0.0
        fb_loss: dict = {}
        fb_iters: dict = {}          # feedback iterations spent per layer this epoch
        paper = sum(hp.iterations for hp in self.fb_hparams) if self.fb_hparams else 0   # per batch
        bar = tqdm(total=len(self.train_loader), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True, leave=False)
        comm0 = self.dist.comm_seconds
        t0 = time.perf_counter()
        for b, (x, y) in enumerate(self.train_loader):
            (s, e), (lo, hi) = self.train_loader.global_bounds(b), self.train_loader.bounds(b)
            r = self.train_step(x, y, watch, b, offset=lo - s, weight=(hi - lo) / (e - s))
            n += e - s
            correct += r["correct"]
            loss_sum += r["loss"] * (e - s)    # the loss is the global batch's
            for name, s in r["feedback"].items():
                if s["loss"] is not None:
                    fb_loss[name] = s["loss"]
                fb_iters[name] = fb_iters.get(name, 0) + s["iterations"]
            bar.update(1)
            if b % 5 == 0 or b == len(self.train_loader) - 1:
                fb, fw = watch.get("feedback"), watch.get("forward")
                elapsed = time.perf_counter() - t0
                budget = (f"  {100 * sum(fb_iters.values()) / (paper * (b + 1)):.0f}% of the paper's feedback "
                          f"iterations" if paper else "")
                bar.set_postfix_str(f"loss {loss_sum / n:.3f}  acc {correct / n:.3f}  {n / elapsed:.0f} img/s  "
                                    f"feedback {100 * fb / max(fb + fw, 1e-9):.0f}% / forward "
                                    f"{100 * fw / max(fb + fw, 1e-9):.0f}%{budget}")
        bar.close()
        (correct,) = self.dist.sum_([correct])
        seconds = time.perf_counter() - t0
        comm = self.dist.comm_seconds - comm0
        self.scheduler.step()
        self.epoch += 1
        for key, v in (("train_seconds", seconds), ("feedback_seconds", watch.get("feedback")),
                       ("forward_seconds", watch.get("forward")), ("comm_seconds", comm), ("images", n)):
            self.totals[key] += v
        spent = self.totals.setdefault("feedback_iterations", {})
        for name, k in fb_iters.items():
            spent[name] = spent.get(name, 0) + k
        record = {"epoch": self.epoch, "step": self.step, "lr": lr, "train_loss": loss_sum / n,
                  "train_accuracy": correct / n, "epoch_seconds": seconds,
                  "feedback_seconds": watch.get("feedback"), "forward_seconds": watch.get("forward"),
                  "images_per_second": n / seconds, "feedback_loss": fb_loss}
        if fb_iters:
            record["feedback_iterations"] = fb_iters
        if self.dist.enabled:
            record.update(ranks=self.dist.world, comm_seconds=comm)
        return record

    def fit(self, stop_after: int | None = None) -> dict:
        """Train for the configured number of epochs (from where a resumed run left off)
        and return the summary (also written to ``out/summary.json``).

        ``stop_after`` trains at most that many epochs in this call (a run
        split over several jobs, each resuming the last).
        """
        self._need_data("fit")
        end = self.config.epochs if stop_after is None else min(self.config.epochs, self.epoch + stop_after)
        try:
            while self.epoch < end:
                record = self.train_epoch()
                record.update(self.evaluate())
                if self.config.diagnostics and self.dist.is_main:
                    record.update(self.diagnostics())
                self.history.append(record)
                self.save_checkpoint()  # before the metrics line: no line for an epoch a resume would redo
                self._log(record)
                self.dist.barrier()     # the checkpoint is complete before any rank goes on
        except DistributedError as err:
            path = self.checkpoint_path
            saved = getattr(self, "saved_epoch", None)
            kept = (f"the last checkpoint ({path}, after epoch {saved}) is intact: restart every rank with "
                    f"--resume" if path is not None and saved is not None else "no checkpoint was written")
            raise DistributedError(f"{err}; training stopped and {kept}") from err
        summary = self.summary()
        if self.out is not None and self.dist.is_main:
            atomic_write_json(summary, self.out / "summary.json")
        return summary

    def _tensorboard(self):
        """The TensorBoard writer, or None (not asked for, no output folder, or not installed)."""
        if not self.config.tensorboard or self.out is None:
            return None
        if getattr(self, "_tb", None) is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard logging was asked for but the tensorboard package is not installed "
                              "(pip install tensorboard); metrics still go to metrics.jsonl")
                self.config.tensorboard = False
                return None
            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        return self._tb

    def _log_tensorboard(self, record: dict) -> None:
        tb = self._tensorboard()
        if tb is None:
            return
        epoch = record["epoch"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                tb.add_scalar(key, value, epoch)
        for name, a in record.get("alignment", {}).items():
            tb.add_scalar(f"alignment_angle/{name}", a["angle_deg"], epoch)
        for name, angle in record.get("gradient_angle_deg", {}).items():
            tb.add_scalar(f"gradient_angle/{name}", angle, epoch)
        for name, loss in record.get("feedback_loss", {}).items():
            tb.add_scalar(f"feedback_loss/{name}", loss, epoch)
        tb.flush()

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        self._log_tensorboard(record)
        if self.config.progress:
            msg = (f"epoch {record['epoch']}/{self.config.epochs}  train loss {record['train_loss']:.4f}  "
                   f"train acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}  "
                   f"{record['images_per_second']:.0f} img/s")
            print(msg, flush=True)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _iterations_summary(self) -> dict:
        """Feedback iterations spent: total, per layer, and the share of the configured budget (what the
        ``paper`` policy spends: every layer's iterations on every step)."""
        spent = dict(self.totals.get("feedback_iterations", {}))
        configured = self.step * sum(hp.iterations for hp in self.fb_hparams) if self.fb_hparams else 0
        return {"total": sum(spent.values()), "per_layer": spent,
                "share_of_configured": sum(spent.values()) / configured if configured else None}

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        t = self.totals
        return {
            **self.info,
            "algo": self.config.algo,
            "dataset": self.info.get("dataset", _data_name(self.dataset) if self.dataset is not None else None),
            "backend": (self.backend if self.backend is not None
                        else "none (backprop)" if self.config.algo == "bp" else "autograd (family method)"),
            "device": str(self.device),
            "epochs": self.epoch,
            "steps": self.step,
            "test_accuracy": last.get("test_accuracy"),
            "test_top5": last.get("test_top5"),
            "best_test_accuracy": max((h["test_accuracy"] for h in self.history), default=None),
            "images_per_second": t["images"] / t["train_seconds"] if t["train_seconds"] else None,
            "train_seconds": t["train_seconds"],
            "feedback_seconds": t["feedback_seconds"],
            "feedback_iterations": self._iterations_summary(),
            "forward_seconds": t["forward_seconds"],
            "comm_seconds": t.get("comm_seconds", 0.0),
            "ranks": self.dist.world,
            "alignment": last.get("alignment", {}),
            "gradient_angle_deg": last.get("gradient_angle_deg", {}),
            "config": dataclasses.asdict(self.config),
            "versions": versions(),
            **self._origin, "date": origin()["date"],    # command, commit and machine as the run started
        }
