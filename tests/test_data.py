import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from forgetting.config import DataConfig
from forgetting.data import (
    DataError,
    check_class_name,
    import_image_folder,
    import_parquet,
    import_sklearn_digits,
    import_source,
    label_counts,
    read_info,
    write_without_classes,
)
from forgetting.datasets import ParquetImageDataset, k_shot


def test_digits_import_is_deterministic_and_stratified(digits, tmp_path):
    info = digits["info"]
    assert info.num_classes == 10 and info.num_rows == 1797 and info.image_size == 16
    again = import_sklearn_digits(tmp_path / "d.parquet", 16)
    assert again.content_hash == info.content_hash
    other_seed = import_sklearn_digits(tmp_path / "e.parquet", 16, seed=1)
    assert other_seed.content_hash != info.content_hash
    n = {s: len(digits[s]) for s in ("train", "val", "test")}
    assert sum(n.values()) == 1797 and n["val"] == pytest.approx(0.2 * 1797, abs=10)
    for s in ("train", "val", "test"):  # every class in every split
        assert set(digits[s].labels.tolist()) == set(range(10))
    # schema: dictionary-encoded class names and splits, row groups, dataset metadata
    pf = pq.ParquetFile(digits["path"])
    assert pf.metadata.num_row_groups == 8
    assert str(pf.schema_arrow.field("split").type).startswith("dictionary")


def test_dataset_items_are_writable_normalised_tensors(digits):
    ds = digits["train"]
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int) and y == int(ds.labels[0])
    x.add_(1)  # writable, no warnings from read-only numpy memory
    x2, _ = ds[0]
    assert float(x2.max()) <= 1.0  # the cache is not corrupted by callers
    sub = ds.with_classes([3])
    assert len(sub) > 0 and set(sub.labels.tolist()) == {3}


def test_a_batch_at_once_is_the_same_floats_as_item_by_item(digits):
    """The DataLoader's batched fetch (``__getitems__``) normalises the whole batch in one go;
    it must give exactly the per-image tensors, and transforms that draw keep the per-image
    path (one draw per image)."""
    from forgetting.config import ModelConfig, TrainConfig
    from forgetting.preprocess import batch_transform, train_transform

    order = [5, len(digits["train"]) - 1, 0, 300, 17, 3, 3]  # row groups out of order
    cfg = ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    normalised, plain = digits["train"], digits["train"].with_transform(None)
    assert batch_transform(normalised.transform) is not None  # the model's Normalize
    for ds in (normalised, plain):
        batch = ds.__getitems__(order)
        assert len(set(ds.row_groups()[order].tolist())) > 2
        for (x, y), i in zip(batch, order, strict=True):
            assert torch.equal(x, ds[i][0]) and y == ds[i][1]
    augmented = ParquetImageDataset(digits["path"], "train").with_transform(train_transform(
        cfg, TrainConfig(augment=True, scale_min=0.5), 16))
    assert batch_transform(augmented.transform) is None
    random.seed(0), torch.manual_seed(0)  # (timm's crop draws from random)
    batch = augmented.__getitems__(order)
    random.seed(0), torch.manual_seed(0)
    assert all(torch.equal(x, augmented[i][0]) for (x, _), i in zip(batch, order, strict=True))


def test_k_shot_is_seeded_and_exact(digits):
    a = k_shot(digits["train"], 4, seed=0)
    b = k_shot(digits["train"], 4, seed=0)
    c = k_shot(digits["train"], 4, seed=1)
    assert np.array_equal(a.rows, b.rows) and not np.array_equal(a.rows, c.rows)
    assert np.bincount(a.labels, minlength=10).tolist() == [4] * 10
    with pytest.raises(DataError, match="has only"):
        k_shot(digits["train"], 10_000, seed=0)


def test_replay_gives_retained_classes_a_buffer_and_forgotten_ones_k(digits):
    from forgetting.datasets import request_data

    retained = [c for c in range(10) if c not in (3, 5)]
    plain = request_data(digits["train"], [3], retained, [5], 4, seed=0)
    data = request_data(digits["train"], [3], retained, [5], 4, seed=0, replay=12)
    assert np.bincount(data.retained.labels, minlength=10)[retained].tolist() == [12] * 8
    # the forgotten and earlier-forgotten draws are the k shots, as without the buffer
    assert np.array_equal(data.forget.rows, plain.forget.rows)
    assert np.array_equal(data.earlier.rows, plain.earlier.rows)
    # at most k: the k shots themselves; full-data requests take every image
    small = request_data(digits["train"], [3], retained, [5], 4, seed=0, replay=2)
    assert np.array_equal(small.retained.rows, plain.retained.rows)
    full = request_data(digits["train"], [3], retained, [5], None, seed=0, replay=12)
    assert len(full.retained) == len(digits["train"].with_classes(retained))


@pytest.mark.parametrize("name", ["../etc", "a/b", "a\\b", "..", "", " x", "x" * 200, "a\nb"])
def test_class_names_that_could_escape_paths_are_refused(name):
    with pytest.raises(DataError, match="invalid class name"):
        check_class_name(name)


def _folder(root, classes=("cat", "dog"), n=4, size=16, mode="RGB"):
    rng = np.random.default_rng(0)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(
                root / c / f"{i}.png")


def test_image_folder_import(tmp_path):
    _folder(tmp_path / "imgs")
    info, rep = import_image_folder(tmp_path / "imgs", tmp_path / "ds.parquet", image_size=16)
    assert info.class_names == ("cat", "dog") and info.channels == 3 and info.num_rows == 8
    assert rep.per_class == {"cat": 4, "dog": 4} and not rep.resized and not rep.skipped
    ds = ParquetImageDataset(tmp_path / "ds.parquet")
    assert ds[0][0].shape == (3, 16, 16)


def test_import_refuses_silent_resizes_and_names_the_params(tmp_path):
    _folder(tmp_path / "imgs", size=28)
    with pytest.raises(DataError) as e:
        import_image_folder(tmp_path / "imgs", tmp_path / "ds.parquet", image_size=16)
    msg = str(e.value)
    assert "8 images are not 16x16 (sizes: 28x28 (8))" in msg, msg
    assert "set data.image_size to 28" in msg and "--resize" in msg
    assert not (tmp_path / "ds.parquet").exists()
    info, rep = import_image_folder(tmp_path / "imgs", tmp_path / "ds.parquet", image_size=16,
                                    resize=True)
    assert info.image_size == 16 and rep.resized == {"28x28 -> 16x16": 8}
    assert "resized 28x28 -> 16x16: 8 images" in rep.lines()


def test_import_refuses_dropping_colour_but_not_grey_stored_as_rgb(tmp_path):
    _folder(tmp_path / "colour")
    with pytest.raises(DataError, match="8 images are in colour but model.in_chans is 1.*"
                                        "model.in_chans: 3.*--channels"):
        import_image_folder(tmp_path / "colour", tmp_path / "a.parquet", 16, channels=1)
    _, rep = import_image_folder(tmp_path / "colour", tmp_path / "a.parquet", 16, channels=1,
                                 convert_channels=True)
    assert rep.converted == {"RGB -> L": 8}
    grey = tmp_path / "grey"  # grey pictures saved as RGB files: nothing is lost
    _folder(grey, mode="L")
    for f in grey.rglob("*.png"):
        Image.open(f).convert("RGB").save(f)
    info, rep = import_image_folder(grey, tmp_path / "b.parquet", 16, channels=1)
    assert info.channels == 1 and rep.converted == {"RGB -> L": 8}


def test_import_lists_skipped_files_and_refuses_nested_images(tmp_path):
    root = tmp_path / "imgs"
    _folder(root)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"x")
    (root / "README.md").write_text("about")
    (root / "dog" / "more").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "dog" / "more" / "x.png")
    with pytest.raises(DataError, match=r"1 nested folder\(s\) hold images.*dog/more/ "
                                        r"\(1 images\).*--skip-nested"):
        import_image_folder(root, tmp_path / "ds.parquet", 16)
    info, rep = import_image_folder(root, tmp_path / "ds.parquet", 16, skip_nested=True)
    assert info.num_rows == 8
    assert rep.skipped == {"not an image (.txt)": ["cat/notes.txt"], "hidden": [".DS_Store"],
                           "file outside the class folders": ["README.md"],
                           "images in nested folders": ["dog/more/ (1 images)"]}
    assert any(line.startswith("skipped 1 (not an image (.txt)): cat/notes.txt")
               for line in rep.lines())


def test_builtin_source_by_name_or_descriptor_file(tmp_path):
    repo_descriptor = Path(__file__).resolve().parents[1] / "data/sources/sklearn-digits.yaml"
    a, rep = import_source("sklearn-digits", tmp_path / "a.parquet", DataConfig(), 1)
    b, _ = import_source(str(repo_descriptor), tmp_path / "b.parquet", DataConfig(), 1)
    assert a.content_hash == b.content_hash and sum(rep.per_class.values()) == 1797
    assert label_counts(tmp_path / "a.parquet", "train").sum() == len(
        ParquetImageDataset(tmp_path / "a.parquet", "train"))
    bad = tmp_path / "x.yaml"
    bad.write_text("builtin: imagenet\n")
    with pytest.raises(DataError, match="'builtin' must be one of sklearn-digits"):
        import_source(str(bad), tmp_path / "c.parquet", DataConfig(), 1)


def test_corrupt_image_is_an_error_and_nothing_is_written(tmp_path):
    _folder(tmp_path / "imgs")
    good = (tmp_path / "imgs" / "cat" / "0.png").read_bytes()
    (tmp_path / "imgs" / "cat" / "0.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"corrupt or truncated image .*cat/0\.png"):
        import_image_folder(tmp_path / "imgs", tmp_path / "ds.parquet", image_size=16)
    assert not (tmp_path / "ds.parquet").exists()
    assert not list(tmp_path.glob(".ds.parquet.tmp*"))


def test_parquet_import_checks_hashes(digits, tmp_path):
    info = import_parquet(digits["path"], tmp_path / "copy.parquet")
    assert info.content_hash == digits["info"].content_hash
    t = pq.read_table(digits["path"])
    imgs = t["image"].to_pylist()
    imgs[5] = imgs[6]
    import pyarrow as pa

    bad = t.set_column(0, "image", pa.array(imgs, type=pa.binary()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="row 5"):
        import_parquet(tmp_path / "bad.parquet", tmp_path / "x.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_info(tmp_path / "junk.parquet")


def test_without_classes_drops_every_split(digits, tmp_path):
    info = write_without_classes(digits["path"], tmp_path / "p.parquet", ["digit_3"])
    ds = ParquetImageDataset(tmp_path / "p.parquet")
    assert 3 not in set(ds.labels.tolist()) and info.content_hash != digits["info"].content_hash
    assert info.class_names == digits["info"].class_names  # the label space is unchanged


def _write_idx(path, arr: np.ndarray) -> None:
    import gzip
    import struct

    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_importer_reads_idx_files_and_keeps_its_test_set(tmp_path):
    from forgetting.data import FASHION_MNIST_CLASSES, import_fashion_mnist, label_counts

    rng = np.random.default_rng(0)
    src = tmp_path / "fm"
    src.mkdir()
    for stem, n in (("train", 100), ("t10k", 30)):
        _write_idx(src / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(src / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    info = import_fashion_mnist(tmp_path / "fm.parquet", src, val_fraction=0.2)
    assert info.class_names == tuple(FASHION_MNIST_CLASSES) and info.image_size == 28
    assert label_counts(tmp_path / "fm.parquet", "test").tolist() == [3] * 10
    assert label_counts(tmp_path / "fm.parquet", "val").tolist() == [2] * 10
    assert label_counts(tmp_path / "fm.parquet", "train").tolist() == [8] * 10
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        import_fashion_mnist(tmp_path / "x.parquet", tmp_path / "nowhere")
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError):
        import_fashion_mnist(tmp_path / "x.parquet", src)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    from forgetting.data import import_source, label_counts

    descriptor = Path(__file__).parents[1] / "data" / "sources" / "fashion-mnist.yaml"
    info, rep = import_source(str(descriptor), tmp_path / "fm.parquet",
                              DataConfig(), 1)
    assert info.num_rows == 70_000 and info.image_size == 28 and info.channels == 1
    assert label_counts(tmp_path / "fm.parquet", "test").sum() == 10_000
    assert rep.per_class["sandal"] == 7_000
