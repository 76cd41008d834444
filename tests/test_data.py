import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from forgetting.data import (
    DataError,
    ParquetImageDataset,
    check_class_name,
    import_image_folder,
    import_parquet,
    import_sklearn_digits,
    k_shot,
    read_info,
    write_without_classes,
)


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


def test_k_shot_is_seeded_and_exact(digits):
    a = k_shot(digits["train"], 4, seed=0)
    b = k_shot(digits["train"], 4, seed=0)
    c = k_shot(digits["train"], 4, seed=1)
    assert np.array_equal(a.rows, b.rows) and not np.array_equal(a.rows, c.rows)
    assert np.bincount(a.labels, minlength=10).tolist() == [4] * 10
    with pytest.raises(DataError, match="has only"):
        k_shot(digits["train"], 10_000, seed=0)


@pytest.mark.parametrize("name", ["../etc", "a/b", "a\\b", "..", "", " x", "x" * 200, "a\nb"])
def test_class_names_that_could_escape_paths_are_refused(name):
    with pytest.raises(DataError, match="invalid class name"):
        check_class_name(name)


def _folder(root, classes=("cat", "dog"), n=4):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")


def test_image_folder_import(tmp_path):
    _folder(tmp_path / "imgs")
    info = import_image_folder(tmp_path / "imgs", tmp_path / "ds.parquet", image_size=16)
    assert info.class_names == ("cat", "dog") and info.channels == 3 and info.num_rows == 8
    ds = ParquetImageDataset(tmp_path / "ds.parquet")
    assert ds[0][0].shape == (3, 16, 16)


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
