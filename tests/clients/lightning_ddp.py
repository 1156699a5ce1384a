"""Lightning DDP on CPU, 2 processes (gloo), with our DataLoader changed for torch's by the
import only. Lightning's ddp launcher re-runs this script for rank 1. Each rank writes what
it saw to ``<out>/rank<R>.json``: per epoch the training indices, the validation indices,
the loader's class, whether batches were tensors. Run: ``python lightning_ddp.py OUT``."""

import json
import os
import sys

import lightning.pytorch as pl
import torch

from loader import DataLoader, Dataset

SAMPLES = 256


class Indexed(Dataset):
    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


class Model(pl.LightningModule):
    def __init__(self, out):
        super().__init__()
        self.out = out
        self.layer = torch.nn.Linear(1, 1)
        self.train_seen, self.val_seen, self.kinds = [[]], [[]], set()

    def train_dataloader(self):  # built inside Lightning's hook: its init args are recorded
        return DataLoader(Indexed(), batch_size=16, shuffle=True, num_workers=1,
                          persistent_workers=True, generator=5)

    def training_step(self, batch, batch_idx):
        x, i = batch
        self.kinds.add((type(x).__name__, type(i).__name__))
        self.train_seen[-1] += i.tolist()
        return self.layer(x).sum()

    def on_train_epoch_end(self):
        self.train_seen.append([])

    def validation_step(self, batch, batch_idx):
        self.val_seen[-1] += batch[1].tolist()

    def on_validation_epoch_end(self):
        self.val_seen.append([])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_fit_end(self):
        train = self.trainer.train_dataloader
        report = {
            "rank": self.global_rank,
            "world": self.trainer.world_size,
            "train": [e for e in self.train_seen if e],
            "val": [e for e in self.val_seen if e],
            "kinds": sorted(self.kinds),
            "train_loader": f"{type(train).__module__}.{type(train).__name__}",
            "train_sampler": type(train.batch_sampler.sampler).__name__
            if train.batch_sampler is not None else type(train.sampler).__name__,
            "train_generator_stream": train._seed_source._kind,
        }
        val = self.trainer.val_dataloaders
        report.update({
            "val_loader": f"{type(val).__module__}.{type(val).__name__}",
            "val_sampler": type(val.batch_sampler.sampler).__name__,
            "val_autotune": val._autotuner is not None,
            "val_output": val.output,
        })
        with open(os.path.join(self.out, f"rank{self.global_rank}.json"), "w") as f:
            json.dump(report, f)


def main(out):
    # built outside any hook, handed to fit: Lightning rebuilds it from its attributes
    val = DataLoader(Indexed(), batch_size=32, num_workers="auto", output="torch")
    trainer = pl.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Model(out), val_dataloaders=val)


if __name__ == "__main__":
    main(sys.argv[1])
