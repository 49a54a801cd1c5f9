"""SimpleVGG on the embedded digits, trained with DTP (L-DRL) by PyTorch Lightning's automatic
optimisation: the LightningModule returns the loss, Lightning calls backward, DTP does the rest.

    pip install lightning
    python docs/examples/lightning_digits.py

The network, its initialisation and every setting are those of ``dtp-fast train --algo ldrl`` (the
digits default); the data comes through an ordinary ``torch.utils.data.DataLoader``.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import dtp_fast


class DigitsDTP(L.LightningModule):
    def __init__(self, net: dtp_fast.DTPNet, config: dtp_fast.TrainConfig):
        super().__init__()
        self.dtp = dtp_fast.DTP.from_config(net, config)   # DTP's settings; the optimiser's are below
        self.config = config

    def forward(self, x):
        return self.dtp(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.dtp(x), y)      # Lightning calls loss.backward(): the DTP step
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        c = self.config
        opt = torch.optim.SGD(self.dtp.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.t_max or c.epochs, eta_min=c.eta_min)
        return [opt], [sched]


def tensors(data: dtp_fast.Dataset, split: str):
    """The split as float tensors, normalised as dtp_fast's own loader does."""
    n = len(data.split(split)[1])
    return next(iter(dtp_fast.Loader(data, split, n, shuffle=False, augment=False)))


def main(epochs: int | None = None, seed: int = 0, progress: bool = True) -> float:
    """Train with Lightning; returns the test accuracy."""
    run = dtp_fast.make_run("simple_vgg", "digits", algo="ldrl", seed=seed, progress=False,
                            **({"epochs": epochs} if epochs else {}))
    config, data = run.config, run.dataset
    train = DataLoader(TensorDataset(*tensors(data, "train")), batch_size=config.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    model = DigitsDTP(run.net, config)
    trainer = L.Trainer(max_epochs=config.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False)
    trainer.fit(model, train)
    model.eval()
    x, y = tensors(data, "test")
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    print(f"test accuracy {100 * accuracy:.2f}% after {config.epochs} epochs, {model.dtp.step} DTP steps")
    return accuracy


if __name__ == "__main__":
    main()
