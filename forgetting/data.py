"""Image-classification datasets stored as one Parquet file.

Layout: ``image`` (PNG bytes), ``label`` (int16), ``class_name`` and ``split`` (dictionary
encoded), ``sha256`` of the image bytes; dataset metadata (class names, image size, channels,
source, content hash) in the schema's key-value metadata. Row groups of ~256 rows let the
torch ``Dataset`` decode images one row group at a time instead of materialising every row
as a Python object.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .config import DataConfig

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
_META_KEY = b"forgetting.dataset"
_CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,127}$")


class DataError(ValueError):
    """Bad dataset input (corrupt image, bad class name, wrong version, ...)."""


def check_class_name(name: str) -> str:
    """Class names end up in paths, tags and reports: no separators, no ``..``, no control chars."""
    if not isinstance(name, str) or not _CLASS_RE.match(name) or ".." in name:
        raise DataError(
            f"invalid class name {name!r}: use 1-128 letters, digits, space, '_', '-', '.', "
            "starting with a letter or digit, without path separators or '..'"
        )
    return name


@dataclass(frozen=True)
class DatasetInfo:
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    source: str
    content_hash: str
    num_rows: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            raise DataError(
                f"unknown class {name!r}; the dataset has: {', '.join(self.class_names)}"
            ) from None


# --------------------------------------------------------------------------- writing


def _encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _stratified_splits(labels: np.ndarray, val: float, test: float, seed: int) -> np.ndarray:
    """Per class, shuffle with a seeded generator and cut into train/val/test."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val, n_test = round(len(idx) * val), round(len(idx) * test)
        if len(idx) >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        split[idx[:n_val]] = "val"
        split[idx[n_val : n_val + n_test]] = "test"
        split[idx[n_val + n_test :]] = "train"
    return split


def write_dataset(
    path: str | Path,
    images: Iterable[np.ndarray],
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    source: str,
    splits: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    row_group_size: int = 256,
) -> DatasetInfo:
    """Write uint8 HxW or HxWxC images to Parquet atomically (temp file, then rename)."""
    for name in class_names:
        check_class_name(name)
    if len(set(class_names)) != len(class_names):
        raise DataError("duplicate class names in dataset")
    labels_np = np.asarray(labels, dtype=np.int16)
    encoded, sizes, channels = [], set(), set()
    for arr in images:
        arr = np.asarray(arr)
        if arr.dtype != np.uint8:
            raise DataError(f"images must be uint8, got {arr.dtype}")
        sizes.add(arr.shape[:2])
        channels.add(1 if arr.ndim == 2 else arr.shape[2])
        encoded.append(_encode_png(arr))
    if len(encoded) != len(labels_np):
        raise DataError(f"{len(encoded)} images but {len(labels_np)} labels")
    if not encoded:
        raise DataError("dataset has no images")
    if len(sizes) != 1 or len(channels) != 1:
        raise DataError(f"images must share one size and channel count, got {sizes} / {channels}")
    (h, w), c = sizes.pop(), channels.pop()
    if h != w:
        raise DataError(f"images must be square, got {h}x{w}")
    if labels_np.min() < 0 or labels_np.max() >= len(class_names):
        raise DataError("label out of range of class_names")
    split_arr = (
        np.asarray(splits, dtype=object)
        if splits is not None
        else _stratified_splits(labels_np, val_fraction, test_fraction, seed)
    )
    bad = set(split_arr) - set(SPLITS)
    if bad:
        raise DataError(f"unknown split names {sorted(bad)}; allowed: {SPLITS}")
    digests = [hashlib.sha256(b).hexdigest() for b in encoded]
    content = hashlib.sha256()
    for d, lab, s in zip(digests, labels_np.tolist(), split_arr, strict=True):
        content.update(f"{d}:{class_names[lab]}:{s}\n".encode())
    info = DatasetInfo(
        class_names=tuple(class_names),
        image_size=int(h),
        channels=int(c),
        source=source,
        content_hash=content.hexdigest(),
        num_rows=len(encoded),
    )
    table = pa.table(
        {
            "image": pa.array(encoded, type=pa.binary()),
            "label": pa.array(labels_np, type=pa.int16()),
            "class_name": pa.array([class_names[i] for i in labels_np]).dictionary_encode(),
            "split": pa.array(list(split_arr), type=pa.string()).dictionary_encode(),
            "sha256": pa.array(digests, type=pa.string()),
        }
    )
    meta = {"class_names": list(info.class_names), "image_size": info.image_size,
            "channels": info.channels, "source": info.source,
            "content_hash": info.content_hash, "num_rows": info.num_rows}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    _atomic_write_table(table, Path(path), row_group_size)
    return info


def _atomic_write_table(table: pa.Table, path: Path, row_group_size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- importers


def import_sklearn_digits(path: str | Path, image_size: int = 16, **split_kw) -> DatasetInfo:
    """scikit-learn's bundled 8x8 digits (real scans, ship inside the package: no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    imgs = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    if image_size != imgs.shape[1]:
        imgs = np.stack(
            [np.array(Image.fromarray(a).resize((image_size, image_size), Image.BILINEAR))
             for a in imgs]
        )
    names = [f"digit_{i}" for i in range(10)]
    return write_dataset(path, imgs, digits.target, names, source="sklearn-digits", **split_kw)


def import_image_folder(
    root: str | Path, path: str | Path, image_size: int, channels: int = 3, **split_kw
) -> DatasetInfo:
    """One sub-folder per class (CASIA-100, ImageNet100 layout). Corrupt files are errors."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"no class folders in {root}")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"channels must be 1 or 3, got {channels}")
    images, labels = [], []
    for label, d in enumerate(class_dirs):
        check_class_name(d.name)
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {d} holds no images")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
                    images.append(np.array(im))
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DataError(f"corrupt or truncated image {f}: {e}") from e
            labels.append(label)
    return write_dataset(path, images, labels, [d.name for d in class_dirs],
                         source=f"imagefolder:{root.name}", **split_kw)


def import_source(source: str, path: str | Path, data: DataConfig, channels: int) -> DatasetInfo:
    """The one dispatch from a source name: ``sklearn-digits`` (bundled), a ``.parquet`` file
    made by this package, or an ImageFolder directory."""
    kw = dict(val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=data.seed,
              row_group_size=data.row_group_size)
    if source == "sklearn-digits":
        return import_sklearn_digits(path, data.image_size, **kw)
    if source.endswith(".parquet"):
        return import_parquet(source, path)
    return import_image_folder(source, path, data.image_size, channels=channels, **kw)


def import_parquet(src: str | Path, path: str | Path) -> DatasetInfo:
    """Validate an existing dataset file (schema, hashes, decodable images) and copy it in."""
    info = read_info(src)
    table = pq.read_table(src)
    for i, (blob, digest) in enumerate(
        zip(table["image"].to_pylist(), table["sha256"].to_pylist(), strict=True)
    ):
        if hashlib.sha256(blob).hexdigest() != digest:
            raise DataError(f"{src}: row {i} image bytes do not match their sha256")
        _decode(blob, f"{src} row {i}")
    _atomic_write_table(table, Path(path), 256)
    return info


# --------------------------------------------------------------------------- reading


def read_info(path: str | Path) -> DatasetInfo:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset not found: {path}")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} is not a readable Parquet file: {e}") from e
    raw = (schema.metadata or {}).get(_META_KEY)
    missing = {"image", "label", "class_name", "split", "sha256"} - set(schema.names)
    if raw is None or missing:
        raise DataError(f"{path} is not a forgetting dataset (missing {sorted(missing) or 'metadata'})")
    m = json.loads(raw)
    return DatasetInfo(tuple(m["class_names"]), m["image_size"], m["channels"], m["source"],
                       m["content_hash"], m["num_rows"])


def _decode(blob: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            return np.array(im)  # np.asarray would be read-only and make torch warn
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"corrupt image at {where}: {e}") from e


class ParquetImageDataset(Dataset):
    """Rows of one split (optionally a subset of classes / indices) of a Parquet dataset.

    Labels are read eagerly (a few bytes per row); image bytes are read one row group at a
    time, decoded to a uint8 tensor and kept in a small LRU, per DataLoader worker.
    Items are ``(float tensor CxHxW in [-1, 1], label)``.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        classes: Iterable[int] | None = None,
        indices: np.ndarray | None = None,
        cache_row_groups: int = 64,
    ) -> None:
        self.path = Path(path)
        self.info = read_info(self.path)
        cols = pq.read_table(self.path, columns=["label", "split"])
        labels = cols["label"].to_numpy().astype(np.int64)
        splits = cols["split"].to_numpy(zero_copy_only=False).astype(str)
        mask = np.ones(len(labels), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise DataError(f"unknown split {split!r}; allowed: {SPLITS}")
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
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = cache_row_groups
        self._pf: pq.ParquetFile | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):  # each DataLoader worker opens its own file handle and cache
        state = self.__dict__.copy()
        state["_pf"], state["_cache"] = None, OrderedDict()
        return state

    def _row_group(self, rg: int) -> torch.Tensor:
        if rg in self._cache:
            self._cache.move_to_end(rg)
            return self._cache[rg]
        if self._pf is None:
            self._pf = pq.ParquetFile(self.path)
        blobs = self._pf.read_row_group(rg, columns=["image"])["image"].to_pylist()
        start = int(self._rg_starts[rg])
        arrs = [_decode(b, f"{self.path} row {start + i}") for i, b in enumerate(blobs)]
        t = torch.from_numpy(np.stack(arrs))
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        self._cache[rg] = t.contiguous()
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return self._cache[rg]

    def image_uint8(self, i: int) -> torch.Tensor:
        row = int(self.rows[i])
        rg = int(np.searchsorted(self._rg_starts, row, side="right") - 1)
        return self._row_group(rg)[row - int(self._rg_starts[rg])]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image_uint8(i).float().div_(127.5).sub_(1.0), int(self.labels[i])

    def subset(self, positions: np.ndarray) -> ParquetImageDataset:
        """A view on some of this dataset's items (positions into it), sharing the cache."""
        out = object.__new__(ParquetImageDataset)
        out.__dict__.update(self.__dict__)
        out.rows, out.labels = self.rows[positions], self.labels[positions]
        return out

    def with_classes(self, classes: Iterable[int]) -> ParquetImageDataset:
        return self.subset(np.flatnonzero(np.isin(self.labels, list(classes))))

    def sha256s(self) -> list[str]:
        col = pq.read_table(self.path, columns=["sha256"])["sha256"].to_numpy(zero_copy_only=False)
        return [str(col[r]) for r in self.rows]


def k_shot(ds: ParquetImageDataset, k: int, seed: int, classes: Iterable[int] | None = None
           ) -> ParquetImageDataset:
    """Seeded choice of exactly k items per class; an error if a class has fewer."""
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


def image_hashes(path: str | Path, classes: Iterable[str]) -> list[str]:
    """sha256 of every image of ``classes``, in every split (what a purge removes)."""
    t = pq.read_table(path, columns=["sha256", "class_name"])
    mask = np.isin(t["class_name"].to_numpy(zero_copy_only=False).astype(str), list(classes))
    return sorted(str(h) for h in t["sha256"].to_numpy(zero_copy_only=False)[mask])


def write_without_classes(src: str | Path, dst: str | Path, drop: Iterable[str]) -> DatasetInfo:
    """A new dataset version without any image of ``drop`` (used by purge)."""
    info = read_info(src)
    drop = set(drop)
    for name in drop:
        info.class_index(name)
    table = pq.read_table(src)
    keep = ~np.isin(table["class_name"].to_numpy(zero_copy_only=False).astype(str), list(drop))
    table = table.filter(pa.array(keep))
    content = hashlib.sha256()
    for d, cn, s in zip(table["sha256"].to_pylist(), table["class_name"].to_pylist(),
                        table["split"].to_pylist(), strict=True):
        content.update(f"{d}:{cn}:{s}\n".encode())
    meta = json.loads(table.schema.metadata[_META_KEY])
    meta.update(content_hash=content.hexdigest(), num_rows=table.num_rows,
                source=f"{meta['source']}|purged:{','.join(sorted(drop))}")
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    _atomic_write_table(table, Path(dst), 256)
    return read_info(dst)
