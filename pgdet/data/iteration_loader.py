"""A training data loader whose batch of iteration i is a pure function of (seed, i, rank).

detectron2's TrainingSampler restarts its random stream when a run resumes, and its worker
sharding interleaves workers, so a resumed run sees different data than an uninterrupted one.
Here each DataLoader *item* is one whole per-process batch, indexed by the global iteration:

- the global sample stream is a concatenation of per-epoch permutations, epoch e permuted by a
  generator seeded with (seed, e); iteration i takes stream positions [i·B, (i+1)·B) for a total
  batch B, and rank r takes its B / world_size share;
- the random augmentations of that batch (detectron2 transforms draw from numpy / random / torch)
  are seeded from (seed, i, rank) just before mapping it.

A resumed run sets :attr:`IterationSampler.start` to its start iteration before the first batch
is drawn and continues exactly where the interrupted run stood, for any number of workers. The
cost: no aspect-ratio grouping (a batch may mix portrait and landscape images; detectron2 pads
them to a common size). ``DATALOADER.EXACT_RESUME False`` restores detectron2's loader.
"""
import copy
import itertools
import random

import numpy as np
import torch
import torch.utils.data as torchdata

def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (distinct tuples give unrelated streams)."""
    seed = 0x9E3779B97F4A7C15
    for v in values:
        seed = (seed ^ (v + 0x632BE59BD9B4E019 + (seed << 6) + (seed >> 2))) & (2**63 - 1)
    return seed


class IterationBatches(torchdata.Dataset):
    """Item i: this process's mapped share of the global batch of iteration i."""

    def __init__(self, dataset_dicts, mapper, total_batch_size, rank, world_size, seed):
        if total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be divisible by the number of "
                f"processes ({world_size})"
            )
        self.dataset_dicts = dataset_dicts
        self.mapper = mapper
        self.total_batch_size = total_batch_size
        self.per_rank = total_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self._epoch, self._perm = -1, None

    def _stream_index(self, position: int) -> int:
        """The dataset index at `position` of the global sample stream."""
        n = len(self.dataset_dicts)
        epoch = position // n
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(n, generator=gen).tolist()
        return self._perm[position % n]

    def __len__(self):
        raise TypeError("IterationBatches is indexed by iteration and has no length")

    def __getitem__(self, iteration: int):
        start = iteration * self.total_batch_size + self.rank * self.per_rank
        aug_seed = mix_seed(self.seed, iteration, self.rank)
        np.random.seed(aug_seed % 2**32)
        random.seed(aug_seed)
        torch.manual_seed(aug_seed)
        batch = []
        for position in itertools.count(start):
            if len(batch) == self.per_rank:
                break
            if position >= start + 10 * self.per_rank + 100:
                raise RuntimeError("The mapper rejected every image of a batch: check the dataset")
            mapped = self.mapper(copy.deepcopy(self.dataset_dicts[self._stream_index(position)]))
            if mapped is not None:  # a mapper may drop an image; take the next of the stream
                batch.append(mapped)
        return batch


class IterationSampler(torchdata.Sampler):
    """Yields iterations start, start + 1, ... forever; set `start` before iterating to resume."""

    def __init__(self, start: int = 0):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _no_collate(batch):
    return batch


def build_iteration_train_loader(dataset_dicts, mapper, total_batch_size, rank, world_size,
                                 seed, num_workers):
    """The loader and its sampler (whose `start` a resumed trainer sets)."""
    sampler = IterationSampler()
    loader = torchdata.DataLoader(
        IterationBatches(dataset_dicts, mapper, total_batch_size, rank, world_size, seed),
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_no_collate,
        persistent_workers=False,
        # its own generator: otherwise creating the iterator draws a worker seed from torch's
        # global RNG, which a resumed run does at a different iteration than an uninterrupted one
        generator=torch.Generator().manual_seed(mix_seed(seed, rank)),
    )
    return loader, sampler
