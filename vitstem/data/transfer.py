"""How images reach the device: the loader's CPU budget and uint8 transfer with normalisation on the device.

- **CPUs per rank** (:func:`rank_cpus`): ``SLURM_CPUS_PER_TASK`` when SLURM started one task per rank (vitstem's
  SLURM launcher), else this process's CPUs (``os.sched_getaffinity``) shared by the ranks of this node (Lightning
  starts them from one process). ``data.loader.num_workers: auto`` is that less one (the training loop's),
  at most :data:`MAX_WORKERS`, on a GPU; 0 on a CPU, where workers would take the cores the training step computes
  on. :meth:`vitstem.models.classifier.Classifier.setup` caps each rank's torch threads at it (unless
  ``OMP_NUM_THREADS`` is set): ranks that vitstem's DDP launcher starts do not get Lightning's cap, and 8 ranks of
  an all-core OpenMP pool each would oversubscribe the node.
- **uint8 transfer** (``data.loader.normalize_on_device``, auto: on a GPU): a transform that ends in
  to-tensor, normalise (and PCA lighting, random erasing) stops at a uint8 tensor in the loader's workers; the batch
  is pinned and copied as uint8 (a quarter of float32's bytes) and converted, lit, normalised and erased on the
  device (:meth:`SplitTransform.finish`, from the data module's ``on_after_batch_transfer``): the idea of timm's
  ``PrefetchLoader``. Loaders whose batches are not moved by Lightning (precise BatchNorm's) finish on the CPU in
  their collate function (:class:`FinishOnCPU`).
"""
from __future__ import annotations

import os

import torch
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybePILToTensor, MaybeToTensor
from torch.utils.data import default_collate
from torchvision import transforms as T

MAX_WORKERS = 16


def rank_cpus(local_ranks: int) -> int:
    """CPUs one rank of ``local_ranks`` on this node may use (module docstring)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_task = os.environ.get("SLURM_CPUS_PER_TASK")
    tasks = os.environ.get("SLURM_NTASKS_PER_NODE", os.environ.get("SLURM_NTASKS", "0")).split("(")[0]
    if per_task and int(tasks or 0) >= local_ranks:
        return max(1, min(int(per_task), affinity))
    return max(1, affinity // max(1, local_ranks))


def resolve(loader: dict, cuda: bool, local_ranks: int) -> dict:
    """The ``auto`` loader settings for a run on a GPU (``cuda``) or a CPU with ``local_ranks`` ranks per node."""
    out = dict(loader)
    if out.get("num_workers") == "auto":
        out["num_workers"] = min(MAX_WORKERS, rank_cpus(local_ranks) - 1) if cuda else 0
    if out.get("pin_memory") == "auto":
        out["pin_memory"] = cuda
    if out.get("normalize_on_device", "auto") == "auto":
        out["normalize_on_device"] = cuda
    return out


class SplitTransform:
    """A ``T.Compose`` that can stop at uint8 (:attr:`uint8`) and leave the rest to :meth:`finish` on a batch.

    Splittable when every op after the to-tensor op is one :meth:`finish` runs on a batch: normalise, random erasing,
    or an op of ours that says so (``on_batches = True``: PCA lighting). Otherwise (and while ``uint8`` is off) it is
    the original transform, unchanged."""

    def __init__(self, transform):
        self.full, self.uint8 = transform, False
        ops = list(getattr(transform, "transforms", []))
        cut = next((i for i, op in enumerate(ops) if isinstance(op, (T.ToTensor, MaybeToTensor))), None)
        tail = ops[cut + 1:] if cut is not None else []
        ok = cut is not None and all(isinstance(op, (T.Normalize, RandomErasing)) or getattr(op, "on_batches", False)
                                     for op in tail)
        self.cpu = T.Compose([*ops[:cut], MaybePILToTensor()]) if ok else None
        self.device_ops = tail if ok else None

    @property
    def transforms(self) -> list:
        """The original transform's ops (as ``T.Compose.transforms``)."""
        return self.full.transforms

    @property
    def splittable(self) -> bool:
        return self.cpu is not None

    def __call__(self, img):
        return self.cpu(img) if self.uint8 else self.full(img)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 batch (B, C, H, W) as the rest of the transform makes it: [0, 1] floats, lit, normalised, erased."""
        x = x.float().div_(255)
        for op in self.device_ops:
            if isinstance(op, RandomErasing):
                op.device = x.device  # its fill values are drawn on this device
            x = op(x)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uint8={self.uint8}, {self.full!r})"


class FinishOnCPU:
    """A collate function: torch's default, then the transform's last ops on the CPU batch (uint8 samples)."""

    def __init__(self, transform: SplitTransform):
        self.transform = transform

    def __call__(self, samples):
        x, y = default_collate(samples)
        return (self.transform.finish(x) if x.dtype == torch.uint8 else x), y
