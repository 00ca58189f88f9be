"""Reading ImageNet tar shards (``data=imagenet_shards``): :class:`ShardDataModule` streams the shards that
``vitstem-shard`` writes (:mod:`vitstem.data.shard_writer`, which describes the format on disk).

Reading (:class:`ShardStream`, an ``IterableDataset``): each epoch the training shards are put in a random order, a
pure function of ``(seed, epoch)``, and read as one stream of samples. The stream is cut into one contiguous range per
(rank, loader worker), in whole batches, so every sample is read at most once per epoch over all ranks and workers.
Every rank gets ``(N // world) // batch_size`` batches (DDP needs the same count on every rank) and its workers whole
batches each (the first ``batches % num_workers`` workers one more); the ``N - world * batches * batch_size`` samples
left over (fewer than ``world * (batch_size + 1)``) are not read that epoch, a different few each epoch as the shard
order changes. A worker reads its range in order (a range may start and end inside a shard: the samples before it
are passed over by their tar headers), mixes it through a shuffle buffer of ``data.shuffle_buffer`` samples (raw
bytes; seeded by ``(seed, epoch, rank, worker)``) and decodes and transforms what leaves the buffer. Torch's
DataLoader takes the workers' batches in turn (batch ``b`` of a rank is worker ``b % num_workers``'s), so the
order of an epoch is a pure function of ``(seed, epoch, rank, world, num_workers, batch_size)``. Memory: each worker
holds ``shuffle_buffer`` encoded images (5000 ImageNet JPEGs: about 0.55 GB).

Validation reads the val shards in order, unshuffled, one contiguous range per rank (rank sizes differ by at most
one sample, no sample twice) and per worker. ``data.holdout`` keeps the last share of the written training order
out of training: as that order is random, a fixed random subset of the images (not the same images as
``data=imagenet`` holds out). Repeated augmentation (``data.augment.num_repeats = k``) reads ``1/k`` as many samples
and puts each in the buffer ``k`` times: an epoch keeps its length, as with timm's ``RepeatAugSampler`` (which
sends the ``k`` copies to different ranks; here they stay with one worker, spread by the buffer).

Resuming mid-epoch (:class:`ShardPosition`): the training loader's ``sampler`` attribute is a :class:`ShardPosition`
with the two methods of :class:`~vitstem.data.sampler.ResumableSampler` that Lightning and
:class:`~vitstem.runs.checkpoint.RunCheckpoint` call, ``set_epoch`` and ``start_at`` (the samples this rank
already trained this epoch). On the next iteration each worker replays its part of the epoch up to that point
through the shuffle buffer, reading and discarding the samples already trained (read, never decoded), and worker
``j`` continues the stream of worker ``(j + done) % num_workers``, so that the batches come in the uninterrupted
order: a resumed run sees exactly the remaining batches of the uninterrupted one. Resuming late in an epoch reads
up to one epoch's share of the shards again (each worker its own).

Why Python's ``tarfile`` and not the ``webdataset`` package: webdataset splits the data over ranks and workers by
whole shards (``split_by_node`` / ``split_by_worker``), so unless the number of shards divides by ranks x workers
the ranks get different numbers of samples (or, resampled, see some samples twice), and it has no notion of
continuing mid-epoch. Both are hard requirements here, and need sample-level ranges inside shards; reading a
tar member by member is all the rest needs. The files are standard webdataset shards all the same.
"""
from __future__ import annotations

import io
import json
import logging
import random
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vitstem.config import ConfigError
from vitstem.data.augment import AugmentedDataModule
from vitstem.data.imagenet import CorruptImageError, imagenet_transforms
from vitstem.data.shard_writer import FORMAT, IMAGE_EXTS, INDEX, SPLITS, ShardError

log = logging.getLogger("vitstem")

# Lightning warns that an IterableDataset's length may be wrong with workers; ours split the data themselves.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def _key_ext(name: str) -> tuple[str, str]:
    """webdataset's split of a member name: the key is all up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _grouped(tar: tarfile.TarFile) -> Iterator[tuple[str, list[tuple[str, tarfile.TarInfo]]]]:
    """The samples of a tar: runs of consecutive file members with one key (headers only, no data read)."""
    key, members = None, []
    for m in tar:
        if not m.isfile():
            continue
        k, ext = _key_ext(m.name)
        if k != key and members:
            yield key, members
            members = []
        key = k
        members.append((ext, m))
    if members:
        yield key, members


def read_shard(path: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, bytes, int]]:
    """``(key, image bytes, label)`` of samples ``start``..``stop`` of the shard ``path``; the samples before
    ``start`` are passed over by their headers. A shard that cannot be read, or that ends before ``stop`` (tar
    stops silently at a damaged header), raises a one-line :class:`ShardError` naming it."""
    i = -1
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for i, (key, members) in enumerate(_grouped(tar)):
                if stop is not None and i >= stop:
                    return
                if i < start:
                    continue
                image = next((m for ext, m in members if ext in IMAGE_EXTS), None)
                cls = next((m for ext, m in members if ext == "cls"), None)
                if image is None or cls is None:
                    raise ShardError(f"sample {key!r} of shard {path} has no {'image' if image is None else '.cls'} "
                                     f"member (members: {[m.name for _, m in members]}); write the shards again with "
                                     "vitstem-shard")
                yield key, tar.extractfile(image).read(), int(tar.extractfile(cls).read())
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:  # truncated, damaged, gone since the start
        raise ShardError(f"shard {path} cannot be read at sample {i + 1} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())}): {_FIX}") from None
    if stop is not None and i + 1 < stop:
        raise ShardError(f"shard {path} ends after {i + 1} samples, {INDEX} says it holds at least {stop} (damaged or "
                         f"replaced): {_FIX}")


_FIX = "copy it again from the source, or write the shards again with vitstem-shard --overwrite"


@dataclass(frozen=True)
class ShardSplit:
    """The shards of one split in written order: ``(path, samples used)``, the samples being each shard's first."""

    shards: tuple[tuple[str, int], ...]

    def __len__(self) -> int:
        return sum(n for _, n in self.shards)

    def head(self, n: int) -> ShardSplit:
        """The first ``n`` samples in written order."""
        kept = []
        for path, count in self.shards:
            if n <= 0:
                break
            kept.append((path, min(count, n)))
            n -= count
        return ShardSplit(tuple(kept))


def _split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` near-equal counts, the larger ones first."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def _buffered(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of ``size``: each new item replaces (and lets out) a random one of the buffer."""
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class ShardStream(IterableDataset):
    """The samples of ``split`` for one rank, read in the loader's workers (module docstring).

    ``drop_last`` (training): whole batches only, the same count on every rank; else (validation, samples) every
    sample once, the last batch of a rank possibly partial. ``shuffle``: shard order and buffer random from
    ``(seed, epoch)``; ``limit``: only the first ``limit`` samples of the epoch's stream; ``repeats``: repeated
    augmentation. ``state`` (shared with the workers): the epoch and the samples to skip, set by the
    :class:`ShardPosition` of the loader before each iteration. ``bad``: a shared count of skipped unreadable images.
    """

    def __init__(self, split: ShardSplit, batch_size: int, transform, world: int = 1, rank: int = 0,
                 shuffle: bool = False, buffer: int = 0, seed: int = 0, drop_last: bool = False, repeats: int = 1,
                 limit: int | None = None, skip_corrupt: bool = False, state: torch.Tensor | None = None,
                 bad: torch.Tensor | None = None):
        self.split, self.batch_size, self.transform, self.world, self.rank = split, batch_size, transform, world, rank
        self.shuffle, self.buffer, self.seed, self.drop_last, self.repeats = shuffle, buffer, seed, drop_last, repeats
        self.total = len(split) if limit is None else min(limit, len(split))
        self.skip_corrupt, self.state = skip_corrupt, state
        self.bad = bad if bad is not None else torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        """The samples this rank yields per epoch (the DataLoader divides by the batch size)."""
        if self.drop_last:
            return (self.total // self.world) // self.batch_size * self.batch_size
        return _split(self.total, self.world)[self.rank]

    def layout(self, workers: int) -> list[list[tuple[int, int, int]]]:
        """Per rank, per worker: ``(first sample read, samples read, samples yielded)`` in the epoch's stream."""
        rows, start, b = [], 0, self.batch_size
        for rank in range(self.world):
            if self.drop_last:
                outputs = [n * b for n in _split((self.total // self.world) // b, workers)]
            else:
                left, outputs = _split(self.total, self.world)[rank], []
                for n in _split(-(-left // b), workers):  # whole batches; the last worker with any: the partial one
                    outputs.append(min(n * b, left))
                    left -= outputs[-1]
            row = []
            for n in outputs:
                reads = -(-n // self.repeats)
                row.append((start, reads, n))
                start += reads
            rows.append(row)
        if start > self.total:
            raise ShardError(f"{self.total} samples cannot give every one of {self.world} rank(s) x {workers} "
                             f"worker(s) whole batches of {b} with {self.repeats} repeats: use fewer workers")
        return rows

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.split.shards)))
        if self.shuffle:
            random.Random(f"shards/{self.seed}/{epoch}").shuffle(order)
        return order

    def _read(self, order: list[int], start: int, count: int) -> Iterator[tuple[str, bytes, int, str]]:
        """Samples ``start``..``start + count`` of the stream of the shards in ``order``."""
        offset, stop = 0, start + count
        for i in order:
            path, n = self.split.shards[i]
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                for key, data, label in read_shard(path, lo, hi):
                    yield key, data, label, path
            offset += n
            if offset >= stop:
                return

    def raw(self, epoch: int, done: int, worker: int, workers: int) -> Iterator[tuple[str, bytes, int, str]]:
        """``(key, image bytes, label, shard)`` that ``worker`` of ``workers`` yields in ``epoch`` after the first
        ``done`` batches of the rank, undecoded."""
        start, reads, outputs = self.layout(workers)[self.rank][worker]
        skip = len(range(worker, done, workers)) * self.batch_size  # its batches among the first `done`: b % workers
        source = self._read(self.shard_order(epoch), start, reads)
        if self.repeats > 1:
            source = (s for s in source for _ in range(self.repeats))
        if self.shuffle and self.buffer > 1:
            source = _buffered(source, self.buffer, random.Random(f"buffer/{self.seed}/{epoch}/{self.rank}/{worker}"))
        for i, sample in enumerate(islice(source, outputs)):
            if i >= skip:
                yield sample

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, skip = (int(v) for v in self.state) if self.state is not None else (0, 0)
        done = skip // self.batch_size
        # torch takes the first batch from worker 0: it continues the stream whose batch comes next, worker `done % W`
        yield from self._decoded(self.raw(epoch, done, (worker + done) % workers, workers))

    def _decoded(self, raws: Iterator) -> Iterator[tuple[torch.Tensor, int]]:
        last, pending = None, 0  # an unreadable image is replaced by the last (or next) readable one: counts stay
        for key, data, label, shard in raws:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    image = img.convert("RGB")
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
                if not self.skip_corrupt:
                    raise CorruptImageError(f"cannot read image {key} of shard {shard}: {e!r}; write the shards again "
                                            "from good images, or set data.skip_corrupt=true to skip (and count) "
                                            "unreadable images") from e
                self.bad.add_(1)
                log.warning("skipping unreadable image %s of shard %s: %r", key, shard, e)
                if last is None:
                    pending += 1
                    continue
                image, label = last
            else:
                last = (image, label)
            for _ in range(pending + 1):
                yield (self.transform(image) if self.transform is not None else image), label
            pending = 0
        if pending:
            raise CorruptImageError(f"no readable image among the {pending} this loader worker read")


class ShardPosition:
    """The training loader's ``sampler`` as Lightning and RunCheckpoint see it: ``set_epoch`` (Lightning, before each
    epoch) and ``start_at`` (RunCheckpoint, on resume: the samples of this epoch already trained), as
    :class:`~vitstem.data.sampler.ResumableSampler`. :meth:`begin` (the loader, before each iteration) hands both to
    the workers through ``state``, a shared tensor; the skip applies to that iteration only.
    ``generator`` (the loader's, for the workers' seeds) is reseeded from ``(seed, epoch)`` as the sampler's is."""

    def __init__(self, seed: int):
        self.seed, self.epoch, self._skip = seed, 0, 0
        self.generator = torch.Generator().manual_seed(seed)
        self.state = torch.zeros(2, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def start_at(self, n: int) -> None:
        self._skip = max(0, int(n))

    def begin(self) -> None:
        self.state[0], self.state[1] = self.epoch, self._skip
        self._skip = 0


class ShardLoader(DataLoader):
    """A DataLoader of a training :class:`ShardStream` whose ``sampler`` attribute is the stream's
    :class:`ShardPosition` (torch's own placeholder sampler of an IterableDataset lives on in ``batch_sampler``)."""

    def __init__(self, dataset: ShardStream, position: ShardPosition, **kwargs):
        self._position = position
        super().__init__(dataset, generator=position.generator, **kwargs)

    @property
    def sampler(self) -> ShardPosition:
        return self._position

    @sampler.setter
    def sampler(self, value) -> None:  # DataLoader.__init__ sets its placeholder
        self._torch_sampler = value

    def __iter__(self):
        self._position.begin()
        return super().__iter__()


def read_index(root: Path) -> dict:
    """``root/index.json``, checked: both splits, every shard present (a :class:`ConfigError` naming what is not)."""
    path = root / INDEX
    if not path.is_file():
        raise ConfigError(f"imagenet_shards: no {path} (data.root={root}): write ImageNet as shards with "
                          f"`vitstem-shard <imagenet folder> {root}` (index.json comes last; without it shards are incomplete)")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT or not all(s in index.get("splits", {}) for s in SPLITS):
        raise ConfigError(f"imagenet_shards: {path} is not a {FORMAT} index with train and val splits: write the shards "
                          f"again with `vitstem-shard <imagenet folder> {root} --overwrite`")
    shards = [s for split in SPLITS for s in index["splits"][split]["shards"]]
    missing = [s["file"] for s in shards if not (root / s["file"]).is_file()]
    if missing:
        raise ConfigError(f"imagenet_shards: {len(missing)} shard(s) of {path} are missing ({', '.join(missing[:3])}"
                          f"{' ...' if len(missing) > 3 else ''}): copy them, or write the shards again with vitstem-shard")
    # a truncated copy (an interrupted rsync, a full disk) or a replaced file: found here, not at its first read
    wrong = [(s["file"], (root / s["file"]).stat().st_size, s["bytes"]) for s in shards
             if "bytes" in s and (root / s["file"]).stat().st_size != s["bytes"]]
    if wrong:
        (name, size, expected), more = wrong[0], f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ConfigError(f"imagenet_shards: shard {root / name} is {size} bytes, {path} says {expected}{more}: it is "
                          f"{'truncated' if size < expected else 'not the one written'}; {_FIX}")
    return index


class ShardDataModule(AugmentedDataModule):
    """``data=imagenet_shards``: the shards under ``root`` (module docstring), with the transforms of ``data=imagenet``.

    ``classes`` and ``max_per_class`` are ``data=imagenet``'s keys: the shards hold the classes and images chosen when
    they were written, so ``classes`` may only repeat the index's list and ``max_per_class`` must be null.
    """

    def __init__(self, root: str, num_classes: int, img_size: int, classes: list[str] | None, max_per_class: int | None,
                 shuffle_buffer: int, skip_corrupt: bool, interpolation: str, crop_pct: float, mean: list[float],
                 std: list[float], holdout: float, loader: dict, augment: dict):
        super().__init__(num_classes=num_classes, img_size=img_size, loader=loader, augment=augment, holdout=holdout)
        self.root, self.skip_corrupt, self.shuffle_buffer = Path(root), skip_corrupt, shuffle_buffer
        self.index = read_index(self.root)
        self.classes = list(self.index["classes"])
        k = len(self.classes)
        if classes is not None and list(classes) != self.classes:
            raise ConfigError(f"data.classes={list(classes)[:5]}{' ...' if len(classes) > 5 else ''} are not the {k} "
                              f"classes of the shards in {self.root}: they are chosen when the shards are written "
                              "(vitstem-shard --classes / --num-classes); leave data.classes null")
        if max_per_class is not None:
            raise ConfigError(f"data.max_per_class={max_per_class}: the shards hold the images chosen when they were "
                              f"written; write them with `vitstem-shard ... --max-per-class {max_per_class}`, and leave "
                              "data.max_per_class null")
        if num_classes != k:
            raise ConfigError(f"data.num_classes={num_classes} but the shards in {self.root} hold {k} classes "
                              f"({self.root / INDEX}): set data.num_classes={k}")
        if shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer={shuffle_buffer} must be >= 0 (0 or 1: no buffer)")
        splits = {s: ShardSplit(tuple((str(self.root / r["file"]), r["samples"]) for r in self.index["splits"][s]["shards"]))
                  for s in SPLITS}
        self.train_set, self.val_set = splits["train"], splits["val"]
        if holdout and not self.index["splits"]["train"]["shuffled"]:
            raise ConfigError(f"data.holdout={holdout}: the training shards in {self.root} are not in random order, so "
                              "their tail is no random share; write them with vitstem-shard, or set data.holdout=0")
        self._trained = self.train_set.head(len(self.train_set) - round(holdout * len(self.train_set)))
        self.train_transform, self.eval_transform = imagenet_transforms(img_size, self.augment, interpolation, crop_pct,
                                                                        mean, std, who="imagenet_shards")
        self.position = ShardPosition(self.loader["seed"])
        self.bad = torch.zeros((), dtype=torch.int64).share_memory_()  # unreadable images skipped, all workers

    @property
    def trained_set(self) -> ShardSplit:
        """The training shards less the ``holdout`` share (the tail of the written order)."""
        return self._trained

    def _stream(self, split: ShardSplit, train: bool, **kwargs) -> ShardStream:
        world, rank = self._world()
        return ShardStream(split, self.batch_size, self.train_transform if train else self.eval_transform,
                           world=world, rank=rank, skip_corrupt=self.skip_corrupt, bad=self.bad, **kwargs)

    def _loader_args(self, persistent: bool = True) -> dict:
        workers = self.loader["num_workers"]
        args = dict(batch_size=self.batch_size, num_workers=workers, pin_memory=self.loader["pin_memory"])
        if workers > 0:
            args.update(prefetch_factor=self.loader["prefetch_factor"],
                        persistent_workers=persistent and self.loader["persistent_workers"])
        return args

    def train_dataloader(self) -> DataLoader:
        stream = self._stream(self.trained_set, train=True, shuffle=True, buffer=self.shuffle_buffer,
                              seed=self.loader["seed"], drop_last=True, repeats=self.augment["num_repeats"],
                              state=self.position.state)
        return ShardLoader(stream, self.position, drop_last=True, **self._loader_args())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._stream(self.val_set, train=False), **self._loader_args())

    def sample_dataloader(self, num_images: int, seed: int) -> DataLoader:
        """``num_images`` training images: the first of a stream shuffled for ``seed`` (buffer included), split over
        the ranks, transformed as in training."""
        stream = self._stream(self.trained_set, train=True, shuffle=True, buffer=self.shuffle_buffer, seed=seed,
                              limit=num_images - num_images % self._world()[0])  # as many per rank (sync_batchnorm)
        return DataLoader(stream, collate_fn=self.cpu_collate(), **self._loader_args(persistent=False))

    @property
    def skipped(self) -> int:
        """Unreadable images skipped so far (``skip_corrupt=true``), every read counted."""
        return int(self.bad)

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped:
            log.warning("imagenet_shards: skipped %d unreadable image read(s) (data.skip_corrupt=true)", self.skipped)
