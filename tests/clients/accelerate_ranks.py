"""accelerate under 2 ranks (``torchrun --nproc_per_node 2``, gloo on CPU), with our
DataLoader changed for torch's by the import only. ``Accelerator.prepare`` rebuilds the
loader as its own ``DataLoaderShard`` over torch's DataLoader (torch's engine runs, with
our dataset, sampler and collate). Each rank writes ``<out>/rank<R>.json``: per loader and
epoch the indices it saw, the engine, whether batches were tensors."""

import json
import os
import sys

import torch
from accelerate import Accelerator

from loader import DataLoader, Dataset, DistributedSampler

SAMPLES = 256


class Indexed(Dataset):
    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        return {"x": float(i), "i": i}


def run(accelerator, dl, epochs=2):
    prepared = accelerator.prepare(dl)
    seen, kinds = [], set()
    for _ in range(epochs):
        epoch = []
        for batch in prepared:
            kinds.add(type(batch["i"]).__name__)
            epoch += batch["i"].tolist()
        seen.append(epoch)
    engine = getattr(prepared, "base_dataloader", prepared)
    return {"seen": seen, "kinds": sorted(kinds),
            "prepared": type(prepared).__mro__[0].__name__,
            "engine": f"{type(engine).__module__}.{type(engine).__name__}"}


def keep_ours(accelerator, epochs=2):
    """The README's recipe for keeping our engine: shard with a DistributedSampler and
    do not hand the loader to prepare()."""
    sampler = DistributedSampler(Indexed(), num_replicas=accelerator.num_processes,
                                 rank=accelerator.process_index, shuffle=True)
    dl = DataLoader(Indexed(), batch_size=16, sampler=sampler, num_workers=1)
    seen, kinds = [], set()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batch_ids = []
        for batch in dl:
            kinds.add(type(batch["i"].to(accelerator.device)).__name__)
            batch_ids += batch["i"].tolist()
        seen.append(batch_ids)
    return {"seen": seen, "kinds": sorted(kinds), "prepared": "-",
            "engine": f"{type(dl).__module__}.{type(dl).__name__}"}


def main(out):
    accelerator = Accelerator(cpu=True)
    report = {"rank": accelerator.process_index, "world": accelerator.num_processes}
    report["shuffled"] = run(accelerator, DataLoader(Indexed(), batch_size=16, shuffle=True,
                                                     num_workers=1))
    report["int_seed"] = run(accelerator, DataLoader(Indexed(), batch_size=16, shuffle=True,
                                                     generator=5, num_workers="auto",
                                                     multiprocessing_context="fork"))
    report["sequential"] = run(accelerator, DataLoader(Indexed(), batch_size=32), epochs=1)
    report["kept"] = keep_ours(accelerator)
    with open(os.path.join(out, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(report, f)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
