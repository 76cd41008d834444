"""Image-classification datasets stored as one Parquet file, and the importers that make them.

Layout: ``image`` (PNG bytes), ``label`` (int16), ``class_name`` and ``split`` (dictionary
encoded), ``sha256`` of the image bytes; dataset metadata (class names, image size, channels,
source, content hash) in the schema's key-value metadata. Row groups of ~256 rows let the
torch ``Dataset`` (``forgetting.datasets``) decode images one row group at a time.

No torch here: reading a dataset's classes or labels (validating a request) stays fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from .config import DataConfig
from .files import write_atomic

SPLITS = ("train", "val", "test")
# the never-seen reference classes' images (data.reference_classes): no training reads these
# splits; the evidence enrols the first in its gallery and probes with the second
REFERENCE_SPLITS = ("reference_train", "reference_heldout")
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


def _train_subset(labels: np.ndarray, split: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows to keep: every held-out row, and a seeded draw of ``n`` training rows per class."""
    rng = np.random.default_rng(seed + 1)  # another stream than the split's
    keep = split != "train"
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & (split == "train"))
        keep[rng.permutation(idx)[:n]] = True
    return keep


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
    train_per_class: int | None = None,
) -> DatasetInfo:
    """Write uint8 HxW or HxWxC images to Parquet atomically (temp file, then rename).
    ``train_per_class``: keep a seeded draw of at most that many training images per class
    and leave the others out (validation and test splits are kept whole)."""
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
    bad = set(split_arr) - set(SPLITS) - set(REFERENCE_SPLITS)
    if bad:
        raise DataError(f"unknown split names {sorted(bad)}; allowed: {SPLITS}")
    if train_per_class is not None:
        keep = _train_subset(labels_np, split_arr, train_per_class, seed)
        encoded, labels_np, split_arr = ([encoded[i] for i in np.flatnonzero(keep)],
                                         labels_np[keep], split_arr[keep])
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
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size,
                                                  compression="zstd"))


# --------------------------------------------------------------------------- importers


@dataclass
class ImportReport:
    """What an import did to the source, so nothing changes without a word."""

    per_class: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> paths
    resized: Counter = field(default_factory=Counter)  # "28x28 -> 16x16" -> images
    converted: Counter = field(default_factory=Counter)  # "RGB -> L" -> images
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, path: str) -> None:
        self.skipped.setdefault(reason, []).append(path)

    def lines(self) -> list[str]:
        """A human summary: one line per fact."""
        n = sum(self.per_class.values())
        counts = sorted(self.per_class.values())
        out = [f"{n} images in {len(self.per_class)} classes (per class: min {counts[0]}, "
               f"max {counts[-1]})" if counts else "no images"]
        out += [f"resized {k}: {v} images" for k, v in sorted(self.resized.items())]
        out += [f"converted {k}: {v} images" for k, v in sorted(self.converted.items())]
        for reason, paths in sorted(self.skipped.items()):
            shown = ", ".join(paths[:3]) + (f", ... ({len(paths)} in all)" if len(paths) > 3 else "")
            out.append(f"skipped {len(paths)} ({reason}): {shown}")
        return out + self.notes

    def as_dict(self) -> dict:
        return {"per_class": self.per_class, "skipped": self.skipped,
                "resized": dict(self.resized), "converted": dict(self.converted),
                "notes": self.notes}


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


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle_boot"]


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian dims, then uint8 data), gzipped or not."""
    import gzip
    import struct

    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    except (OSError, EOFError, struct.error) as e:
        raise DataError(f"{path} is not a readable IDX file: {e}") from e
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {data.size} bytes for shape {dims}")
    return data.reshape(dims)


def import_fashion_mnist(path: str | Path, directory: str | Path = FASHION_MNIST_DIR, *,
                         val_fraction: float = 0.2, seed: int = 0, **kw) -> DatasetInfo:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (70,000 real 28x28 grey images,
    10 classes; nothing downloaded), at its source resolution. Its own test set (10,000) is
    the test split; the validation split is drawn per class from its 60,000 training images."""
    d = Path(directory)
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    files = {s.rsplit("-", 2)[0]: next((p for ext in (".gz", "") if (p := d / f"{s}{ext}")
                                        .is_file()), None) for s in stems}
    if None in files.values():
        raise DataError(f"Fashion-MNIST not found in {d}: install Debian's package "
                        "(apt-get install dataset-fashion-mnist; `dpkg -L dataset-fashion-mnist` "
                        "lists its IDX files)")
    train_x, train_y = _read_idx(files["train-images"]), _read_idx(files["train-labels"])
    test_x, test_y = _read_idx(files["t10k-images"]), _read_idx(files["t10k-labels"])
    split = _stratified_splits(train_y, val_fraction, 0.0, seed)
    split[split == "test"] = "train"  # a test fraction of 0 still cuts one image per class
    return write_dataset(path, np.concatenate([train_x, test_x]),
                         np.concatenate([train_y, test_y]).astype(np.int64),
                         FASHION_MNIST_CLASSES, source="fashion-mnist",
                         splits=np.concatenate([split, np.full(len(test_y), "test", dtype=object)]),
                         **kw)


_MODES = {1: "L", 3: "RGB"}


def _in_colour(im: Image.Image) -> bool:
    """Whether the image carries colour; an RGB file whose channels are equal is grey, and
    turning it grey loses nothing."""
    if not ({"R", "G", "B"} <= set(im.getbands()) or im.mode == "P"):
        return False
    a = np.array(im.convert("RGB"))
    return not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def import_image_folder(
    root: str | Path, path: str | Path, image_size: int, channels: int = 3, *,
    resize: bool = False, convert_channels: bool = False, skip_nested: bool = False,
    **split_kw,
) -> tuple[DatasetInfo, ImportReport]:
    """One sub-folder per class (CASIA-100, ImageNet100 layout).

    Nothing is changed silently: images of another size are refused unless ``resize``, colour
    images for a 1-channel model unless ``convert_channels``, images in nested folders unless
    ``skip_nested``; other files are skipped and listed. Corrupt images are errors.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    mode = _MODES.get(channels)
    if mode is None:
        raise DataError(f"channels must be 1 or 3, got {channels}")
    rep = ImportReport()
    class_dirs = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            rep.skip("hidden", p.name)
        elif p.is_dir():
            class_dirs.append(p)
        else:
            rep.skip("file outside the class folders", p.name)
    if not class_dirs:
        raise DataError(f"no class folders in {root}")
    images, labels = [], []
    sizes: Counter = Counter()
    colour = 0
    nested: list[str] = []
    for label, d in enumerate(class_dirs):
        check_class_name(d.name)
        n = 0
        for f in sorted(d.iterdir()):
            rel = f"{d.name}/{f.name}"
            if f.name.startswith("."):
                rep.skip("hidden", rel)
            elif f.is_dir():
                inner = sum(1 for g in f.rglob("*") if g.suffix.lower() in IMAGE_SUFFIXES)
                if inner:
                    nested.append(f"{rel}/ ({inner} images)")
                else:
                    rep.skip("nested folder without images", f"{rel}/")
            elif f.suffix.lower() not in IMAGE_SUFFIXES:
                rep.skip(f"not an image ({f.suffix or 'no suffix'})", rel)
            else:
                try:
                    with Image.open(f) as im:
                        im.load()
                        sizes[im.size] += 1
                        if channels == 1 and _in_colour(im):
                            colour += 1
                        if im.mode != mode:
                            rep.converted[f"{im.mode} -> {mode}"] += 1
                        im = im.convert(mode)
                        if im.size != (image_size, image_size):
                            rep.resized[f"{im.size[0]}x{im.size[1]} -> {image_size}x"
                                        f"{image_size}"] += 1
                            im = im.resize((image_size, image_size), Image.BILINEAR)
                        images.append(np.array(im))
                except (UnidentifiedImageError, OSError, SyntaxError) as e:
                    raise DataError(f"corrupt or truncated image {f}: {e}") from e
                labels.append(label)
                n += 1
        if not n:
            raise DataError(f"class folder {d} holds no images")
        rep.per_class[d.name] = n
    problems = []
    if nested and not skip_nested:
        problems.append(
            f"{len(nested)} nested folder(s) hold images that would not be read ("
            f"{', '.join(nested[:3])}): move them into their class folder, or pass "
            "--skip-nested to leave them out")
    elif nested:
        rep.skipped["images in nested folders"] = nested
    off = sum(v for k, v in sizes.items() if k != (image_size, image_size))
    if off and not resize:
        common = ", ".join(f"{w}x{h} ({c})" for (w, h), c in sizes.most_common(3))
        (w, h), _ = sizes.most_common(1)[0]
        keep = (f"to store them as they are, set data.image_size to {w} in params.yaml (the "
                "model's transform scales them to model.image_size as it loads them); "
                if w == h else "the model takes square images; ")
        problems.append(
            f"{off} images are not {image_size}x{image_size} (sizes: {common}): {keep}to "
            f"scale them to {image_size}x{image_size}, pass --resize (params: data.resize: "
            "true)")
    if colour and not convert_channels:
        problems.append(
            f"{colour} images are in colour but model.in_chans is 1: to keep colour, set "
            "model.in_chans: 3 in params.yaml; to turn them grey, pass --channels (params: "
            "data.convert_channels: true)")
    if problems:
        raise DataError(f"{root} was not imported, nothing changed: " + "; ".join(problems))
    info = write_dataset(path, images, labels, [d.name for d in class_dirs],
                         source=f"imagefolder:{root.name}", **split_kw)
    return info, rep


BUILTIN = ("sklearn-digits", "fashion-mnist")


def builtin_source(source: str) -> str | None:
    """The built-in dataset a source names: ``sklearn-digits`` itself, or a descriptor file
    (``data/sources/*.yaml`` holding ``builtin: <name>``, a path ``dvc.yaml`` can depend on)."""
    if source in BUILTIN:
        return source
    if source.endswith((".yaml", ".yml")):
        import yaml

        p = Path(source)
        if not p.is_file():
            raise DataError(f"source descriptor not found: {p}")
        name = (yaml.safe_load(p.read_text()) or {}).get("builtin")
        if name not in BUILTIN:
            raise DataError(f"{p}: 'builtin' must be one of {', '.join(BUILTIN)}, got {name!r}")
        return name
    return None


def import_source(source: str, path: str | Path, data: DataConfig, channels: int,
                  ) -> tuple[DatasetInfo, ImportReport]:
    """The one dispatch from a source: ``sklearn-digits`` (bundled, or its descriptor file),
    a ``.parquet`` file made by this package, or an ImageFolder directory."""
    kw = dict(val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=data.seed,
              row_group_size=data.row_group_size, train_per_class=data.train_per_class)
    if builtin_source(source) == "sklearn-digits":
        info = import_sklearn_digits(path, data.image_size, **kw)
        rep = ImportReport(per_class={})
        rep.notes.append(f"built-in 8x8 digits scaled to {data.image_size}x{data.image_size} "
                         "(data.image_size)")
    elif builtin_source(source) == "fashion-mnist":
        kw.pop("test_fraction")
        info = import_fashion_mnist(path, **kw)
        rep = ImportReport(per_class={})
        rep.notes.append("built-in Fashion-MNIST (Debian dataset-fashion-mnist) at its 28x28 "
                         "source resolution; its own test set is the test split")
    elif source.endswith(".parquet"):
        if data.train_per_class is not None:
            raise DataError("data.train_per_class applies to images being imported; a .parquet "
                            "source is copied as it is: unset it")
        info, rep = import_parquet(source, path, data.row_group_size), ImportReport()
    else:
        return import_image_folder(source, path, data.image_size, channels=channels,
                                   resize=data.resize, convert_channels=data.convert_channels,
                                   skip_nested=data.skip_nested, **kw)
    labels = pq.read_table(path, columns=["label"])["label"].to_numpy()
    counts = np.bincount(labels, minlength=info.num_classes)
    rep.per_class = {n: int(c) for n, c in zip(info.class_names, counts, strict=True)}
    if data.reference_classes:
        names = choose_reference_classes(info.class_names, data.reference_classes, data.seed)
        info = set_aside_reference_classes(path, path, names)
        rep.notes.append(f"set aside as the never-seen evidence reference (no training reads "
                         f"them, no request may forget them): {', '.join(names)}")
    return info, rep


def import_parquet(src: str | Path, path: str | Path, row_group_size: int = 256) -> DatasetInfo:
    """Validate an existing dataset file (schema, hashes, decodable images) and copy it in."""
    info = read_info(src)
    table = pq.read_table(src)
    for i, (blob, digest) in enumerate(
        zip(table["image"].to_pylist(), table["sha256"].to_pylist(), strict=True)
    ):
        if hashlib.sha256(blob).hexdigest() != digest:
            raise DataError(f"{src}: row {i} image bytes do not match their sha256")
        decode_image(blob, f"{src} row {i}")
    _atomic_write_table(table, Path(path), row_group_size)
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


def decode_image(blob: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            return np.array(im)  # np.asarray would be read-only and make torch warn
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"corrupt image at {where}: {e}") from e


def label_counts(path: str | Path, split: str = "train") -> np.ndarray:
    """Images per class index in one split, read from two small columns (no image decoding)."""
    t = pq.read_table(path, columns=["label", "split"])
    labels = t["label"].to_numpy()[t["split"].to_numpy(zero_copy_only=False).astype(str) == split]
    return np.bincount(labels.astype(np.int64), minlength=read_info(path).num_classes)


def image_hashes_of(path: str | Path) -> list[str]:
    """sha256 of every image of a dataset file."""
    return [str(h) for h in pq.read_table(path, columns=["sha256"])["sha256"].to_pylist()]


def image_hashes(path: str | Path, classes: Iterable[str]) -> list[str]:
    """sha256 of every image of ``classes``, in every split (what a purge removes)."""
    t = pq.read_table(path, columns=["sha256", "class_name"])
    mask = np.isin(t["class_name"].to_numpy(zero_copy_only=False).astype(str), list(classes))
    return sorted(str(h) for h in t["sha256"].to_numpy(zero_copy_only=False)[mask])


def _rewrite(table: pa.Table, dst: str | Path, source_note: str) -> DatasetInfo:
    """``table`` (rows filtered or re-split) as a new dataset version: its content hash over
    every image, class and split, its source marked with what was done."""
    content = hashlib.sha256()
    for d, cn, s in zip(table["sha256"].to_pylist(), table["class_name"].to_pylist(),
                        table["split"].to_pylist(), strict=True):
        content.update(f"{d}:{cn}:{s}\n".encode())
    meta = json.loads(table.schema.metadata[_META_KEY])
    meta.update(content_hash=content.hexdigest(), num_rows=table.num_rows,
                source=f"{meta['source']}|{source_note}")
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    _atomic_write_table(table, Path(dst), 256)
    return read_info(dst)


def _class_mask(table: pa.Table, names: Iterable[str]) -> np.ndarray:
    return np.isin(table["class_name"].to_numpy(zero_copy_only=False).astype(str), list(names))


def write_without_classes(src: str | Path, dst: str | Path, drop: Iterable[str]) -> DatasetInfo:
    """A new dataset version without any image of ``drop`` (used by purge)."""
    info = read_info(src)
    drop = set(drop)
    for name in drop:
        info.class_index(name)
    table = pq.read_table(src)
    table = table.filter(pa.array(~_class_mask(table, drop)))
    return _rewrite(table, dst, f"purged:{','.join(sorted(drop))}")


def choose_reference_classes(class_names: Sequence[str], wanted: Sequence[str] | int,
                             seed: int) -> list[str]:
    """``data.reference_classes`` as names: those given (checked), or a seeded draw of that
    many; at least two classes must remain to forget one and keep one."""
    if isinstance(wanted, int):
        if wanted > len(class_names) - 2:
            raise DataError(f"data.reference_classes: {wanted} of {len(class_names)} classes "
                            "leaves fewer than two to train on")
        rng = np.random.default_rng(seed)
        return sorted(class_names[i] for i in rng.choice(len(class_names), wanted, replace=False))
    names = list(dict.fromkeys(wanted))
    for n in names:
        if n not in class_names:
            raise DataError(f"data.reference_classes: unknown class {n!r}; the dataset has: "
                            f"{', '.join(list(class_names)[:20])}")
    if len(class_names) - len(names) < 2:
        raise DataError("data.reference_classes leaves fewer than two classes to train on")
    return sorted(names)


def set_aside_reference_classes(src: str | Path, dst: str | Path, names: Iterable[str]
                                ) -> DatasetInfo:
    """Move every image of ``names`` to the reference splits (training images to
    ``reference_train``, validation and test ones to ``reference_heldout``): the class list
    stays whole, so labels keep their meaning, and no training ever reads them."""
    names = sorted(set(names))
    table = pq.read_table(src)
    mask = _class_mask(table, names)
    split = table["split"].to_numpy(zero_copy_only=False).astype(object)
    split[mask] = np.where(split[mask] == "train", REFERENCE_SPLITS[0], REFERENCE_SPLITS[1])
    table = table.set_column(table.schema.get_field_index("split"), "split",
                             pa.array(list(split), type=pa.string()).dictionary_encode())
    return _rewrite(table, dst, f"reference:{','.join(names)}")


def reference_class_names(path: str | Path) -> list[str]:
    """The classes a dataset set aside as the never-seen reference (none: an empty list)."""
    t = pq.read_table(path, columns=["class_name", "split"])
    split = t["split"].to_numpy(zero_copy_only=False).astype(str)
    names = t["class_name"].to_numpy(zero_copy_only=False).astype(str)
    return sorted(set(names[np.isin(split, REFERENCE_SPLITS)].tolist()))
