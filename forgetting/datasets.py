"""The torch side of the Parquet store: a map-style ``Dataset`` over one split, and k-shot draws.

Labels are read eagerly (a few bytes per row); image bytes are read one row group at a time,
decoded to a uint8 tensor and kept in an LRU bounded by bytes, one per process (and per
DataLoader worker) for every dataset over the same file.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from .config import ModelConfig
from .data import REFERENCE_SPLITS, SPLITS, DataError, decode_image, read_info
from .preprocess import batch_transform, eval_transform, to_signed_unit


class RowGroupCache:
    """Decoded row groups, least recently used dropped first, bounded by bytes.

    Bytes, not a count of row groups: a shuffled epoch touches every row group in turn, so a
    cache smaller than the data decodes most of it again for every batch (measured: Fashion-
    MNIST's 274 row groups through a 64-group cache ran slower than one core). Views made by
    ``subset`` share one cache; so do all datasets of a process over one file (``SHARED``): a
    request reads its file's splits through several of them (prototypes, training,
    evaluation, evidence), and each decoded every image again (a tiny request took 5.5 CPU-s
    with a cache per dataset, 4.5 with this). Keyed by the file's identity too, so a rewritten
    file is never served stale. Tasks run in threads: a lock guards the order."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.misses = 0  # row groups decoded (benchmarks/throughput.py reads it)
        self.items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key: tuple, value: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.misses += 1
            self.items[key] = value
            self.size += value.numel() * value.element_size()
            while self.size > self.limit and len(self.items) > 1:
                old = self.items.popitem(last=False)[1]
                self.size -= old.numel() * old.element_size()
        return value

    def __getstate__(self):  # (a spawned DataLoader worker starts an empty one of its own)
        return {"limit": self.limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["limit"])


SHARED = RowGroupCache(1 << 30)
# a process forked while another thread held the lock (a DataLoader worker) would wait on it
# forever: the child starts with a free one
os.register_at_fork(after_in_child=lambda: setattr(SHARED, "_lock", threading.Lock()))


class ParquetImageDataset(Dataset):
    """Rows of one split (optionally a subset of classes / indices) of a Parquet dataset.

    Labels are read eagerly (a few bytes per row); image bytes are read one row group at a
    time, decoded to a uint8 tensor and kept in an LRU bounded by bytes: the process's
    (``SHARED``, 1 GiB), or one of ``cache_bytes`` for this dataset and its views.
    Items are ``(transform(uint8 CxHxW tensor), label)``; the transform comes from the model
    (``forgetting.preprocess``); without one, images are scaled to [-1, 1].
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        classes: Iterable[int] | None = None,
        indices: np.ndarray | None = None,
        cache_bytes: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.transform = transform
        self.path = Path(path)
        self.info = read_info(self.path)
        cols = pq.read_table(self.path, columns=["label", "split"])
        labels = cols["label"].to_numpy().astype(np.int64)
        splits = cols["split"].to_numpy(zero_copy_only=False).astype(str)
        mask = np.ones(len(labels), dtype=bool)
        if split is not None:
            if split not in SPLITS + REFERENCE_SPLITS:
                raise DataError(f"unknown split {split!r}; allowed: {SPLITS + REFERENCE_SPLITS}")
            mask &= splits == split
        if classes is not None:
            mask &= np.isin(labels, np.fromiter(classes, dtype=np.int64))
        rows = np.flatnonzero(mask)
        if indices is not None:
            rows = np.intersect1d(rows, indices)
        self.rows = rows
        self.labels = labels[rows]
        meta = pq.ParquetFile(self.path).metadata
        self._rg_starts = np.cumsum([0] + [meta.row_group(i).num_rows
                                           for i in range(meta.num_row_groups)])
        self._cache = SHARED if cache_bytes is None else RowGroupCache(cache_bytes)
        st = os.stat(self.path)
        self._file_key = (str(self.path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
        self._pf: pq.ParquetFile | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):  # each DataLoader worker opens its own file handle and cache
        state = self.__dict__.copy()
        state["_pf"] = None
        return state

    def _row_group(self, rg: int) -> torch.Tensor:
        key = (*self._file_key, rg)
        if (hit := self._cache.get(key)) is not None:
            return hit
        if self._pf is None:
            self._pf = pq.ParquetFile(self.path)
        blobs = self._pf.read_row_group(rg, columns=["image"])["image"].to_pylist()
        start = int(self._rg_starts[rg])
        arrs = [decode_image(b, f"{self.path} row {start + i}") for i, b in enumerate(blobs)]
        t = torch.from_numpy(np.stack(arrs))
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        return self._cache.put(key, t.contiguous())

    def image_uint8(self, i: int) -> torch.Tensor:
        row = int(self.rows[i])
        rg = int(self._groups_of(row))
        return self._row_group(rg)[row - int(self._rg_starts[rg])]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.image_uint8(i)
        x = self.transform(img) if self.transform else to_signed_unit(img)
        return x, int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch at once (the DataLoader calls it instead of ``__getitem__`` per item) where
        the transform is elementwise: one scaling and normalisation of the whole batch gives
        the same floats as one per image, without a transform call per image (item by item,
        loading was 1.3 of a tiny model's 13.3 training CPU-s here; batched, 0.2). Transforms
        that draw or resize keep the per-image path."""
        batched = batch_transform(self.transform)
        if batched is None:
            return [self[i] for i in indices]
        x = batched(self.images_uint8(indices))
        return list(zip(x, self.labels[indices].tolist(), strict=True))

    def images_uint8(self, indices: Sequence[int]) -> torch.Tensor:
        """Items' images as one N x C x H x W tensor, gathered row group by row group."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        groups = self._groups_of(rows)
        out: torch.Tensor | None = None
        for rg in np.unique(groups):
            at = np.flatnonzero(groups == rg)
            images = self._row_group(int(rg))
            if out is None:
                out = images.new_empty((len(rows), *images.shape[1:]))
            out[torch.from_numpy(at)] = images[torch.from_numpy(rows[at] - self._rg_starts[rg])]
        return out if out is not None else torch.empty((0,), dtype=torch.uint8)

    def with_transform(self, transform: Callable[[torch.Tensor], torch.Tensor]
                       ) -> ParquetImageDataset:
        """The same rows through another transform (training augmentation), sharing the cache."""
        out = self.subset(np.arange(len(self)))
        out.transform = transform
        return out

    def subset(self, positions: np.ndarray) -> ParquetImageDataset:
        """A view on some of this dataset's items (positions into it), sharing the cache."""
        out = object.__new__(ParquetImageDataset)
        out.__dict__.update(self.__dict__)
        out.rows, out.labels = self.rows[positions], self.labels[positions]
        return out

    def joined(self, other: ParquetImageDataset) -> ParquetImageDataset:
        """This view's items, then ``other``'s (another view on the same file): the held-out
        images as one dataset (validation and test) with ``labels`` and ``subset``."""
        if other.path != self.path:
            raise ValueError(f"cannot join views of two files: {self.path}, {other.path}")
        out = self.subset(np.arange(len(self)))
        out.rows, out.labels = np.r_[self.rows, other.rows], np.r_[self.labels, other.labels]
        return out

    def with_classes(self, classes: Iterable[int]) -> ParquetImageDataset:
        return self.subset(np.flatnonzero(np.isin(self.labels, list(classes))))

    def row_groups(self) -> np.ndarray:
        """The row group each item's image lives in."""
        return self._groups_of(self.rows)

    def _groups_of(self, rows: np.ndarray | int) -> np.ndarray:
        return np.searchsorted(self._rg_starts, rows, side="right") - 1

    def decoded_bytes(self) -> int:
        """What decoding every item once would hold in memory (uint8 C x H x W each)."""
        return len(self) * self.info.channels * self.info.image_size ** 2

    @property
    def cache_limit(self) -> int:
        return self._cache.limit

    def sha256s(self) -> list[str]:
        col = pq.read_table(self.path, columns=["sha256"])["sha256"].to_numpy(zero_copy_only=False)
        return [str(col[r]) for r in self.rows]


class BlockShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffle that decodes each row group about once per epoch, whatever the dataset's size.

    A uniform shuffle over a dataset larger than the row-group cache touches a different row
    group for almost every image, so nearly every batch decodes row groups again (measured on
    Fashion-MNIST before the cache was enlarged: 131 img/s). Here the row groups are shuffled,
    then taken ``window`` at a time, and the images of each window shuffled together: a batch
    mixes images of ``window`` row groups, and the cache needs to hold only those. With
    DataLoader workers each worker keeps its own cache, so a row group may be decoded once per
    worker. Seeded by ``seed`` and the epoch (``set_epoch``, as DistributedSampler)."""

    def __init__(self, ds: ParquetImageDataset, window: int, seed: int = 0) -> None:
        self.groups = ds.row_groups()
        self.window, self.seed, self.epoch = max(1, window), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1  # a DataLoader iterated again draws the next epoch's order
        order = rng.permutation(np.unique(self.groups))
        for i in range(0, len(order), self.window):
            pos = np.flatnonzero(np.isin(self.groups, order[i:i + self.window]))
            yield from rng.permutation(pos).tolist()


def block_window(ds: ParquetImageDataset) -> int:
    """Row groups per shuffle window: half of what the cache holds (the other half keeps the
    window before it while a batch straddles the two), at least one."""
    groups = np.unique(ds.row_groups())
    per_group = max(1, ds.decoded_bytes() // max(1, len(groups)))
    return max(1, int(ds.cache_limit // per_group) // 2)


def k_shot(ds: ParquetImageDataset, k: int, seed: int, classes: Iterable[int] | None = None
           ) -> ParquetImageDataset:
    """Seeded choice of exactly k items per class; an error if a class has fewer.

    Prototypes and training draw with this one function and the same seeds
    (``request_subsets``), so both see the same k images."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(ds.labels.tolist()) if classes is None else set(classes))
    picks = []
    for c in classes:
        pos = np.flatnonzero(ds.labels == c)
        if len(pos) < k:
            raise DataError(
                f"{k} shots asked but class {ds.info.class_names[c]!r} has only {len(pos)} "
                "training images"
            )
        picks.append(rng.choice(pos, size=k, replace=False))
    return ds.subset(np.sort(np.concatenate(picks)) if picks else np.array([], dtype=np.int64))


@dataclass
class RequestData:
    """The training images one request may use."""

    forget: ParquetImageDataset
    retained: ParquetImageDataset
    earlier: ParquetImageDataset | None  # earlier-forgotten classes whose images remain


def request_data(train: ParquetImageDataset, forget: Sequence[int], retained: Sequence[int],
                 earlier: Sequence[int], shots: int | None, seed: int, replay: int = 0
                 ) -> RequestData:
    """Forgotten, retained and earlier-forgotten training images; k per class when ``shots``,
    and ``replay`` per retained class when that is more (``forget.replay``: a buffer of the
    retained classes' training images, drawn with the request's seed like the shots).

    The one draw shared by the prototypes and the training of a request (same seeds, same
    images). Earlier classes with fewer than ``shots`` images left (a purge removes them all)
    are left out.
    """
    counts = np.bincount(train.labels, minlength=len(train.info.class_names))
    held = [c for c in sorted(set(earlier)) if counts[c] >= (shots or 1)]
    retained = [c for c in retained if counts[c]]  # never-seen reference classes have none
    f, r = train.with_classes(forget), train.with_classes(retained)
    o = train.with_classes(held) if held else None
    if shots is not None:
        f, r = k_shot(f, shots, seed, forget), k_shot(r, max(shots, replay), seed + 1, retained)
        o = k_shot(o, shots, seed + 2, held) if held else None
    return RequestData(f, r, o)


def _views(path: str | Path, model: ModelConfig | None, names: Sequence[str]
           ) -> dict[str, ParquetImageDataset]:
    tf = eval_transform(model, read_info(path).image_size) if model is not None else None
    return {s: ParquetImageDataset(path, s, transform=tf) for s in names}


def splits(path: str | Path, model: ModelConfig | None = None
           ) -> dict[str, ParquetImageDataset]:
    """The three splits, through ``model``'s eval transform when given."""
    return _views(path, model, SPLITS)


def reference_splits(path: str | Path, model: ModelConfig | None = None
                     ) -> dict[str, ParquetImageDataset]:
    """The never-seen reference classes' two splits (empty views when there are none)."""
    return _views(path, model, REFERENCE_SPLITS)
