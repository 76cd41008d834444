"""Durable writes: the file's data and the directory entry reach the disk before a write counts
as done (a power cut must not leave an empty ledger entry, adapter or checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forgetting.config import ModelConfig
from forgetting.files import write_json_atomic
from forgetting.model import create_model, save_checkpoint


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """Every path os.fsync is called on, in order."""
    seen: list[Path] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def _synced_then_renamed(seen: list[Path], path: Path) -> None:
    """The temp file was fsynced (under its temp name), then the directory, after the rename."""
    tmp = [i for i, p in enumerate(seen) if p.parent == path.parent
           and p.name.startswith(f".{path.name}.tmp-")]
    dirs = [i for i, p in enumerate(seen) if p == path.parent]
    assert tmp and dirs and max(dirs) > min(tmp), (path, seen)


def test_json_writes_fsync_file_and_directory(tmp_path, fsynced):
    path = tmp_path / "ledger" / "req-0001.json"
    write_json_atomic(path, {"status": "done"})
    _synced_then_renamed(fsynced, path)


def test_ledger_entries_are_durable(tmp_path, fsynced):
    from filelock import FileLock

    from tasks.ledger import Ledger, RequestSpec

    led = Ledger(tmp_path / "requests", FileLock(tmp_path / "l.lock"))
    req = led.add(RequestSpec(classes=["a"]), lambda spec, queue: None)
    _synced_then_renamed(fsynced, tmp_path / "requests" / f"{req.id}.json")
    fsynced.clear()
    led.update(req.id, status="running")
    _synced_then_renamed(fsynced, tmp_path / "requests" / f"{req.id}.json")


def test_checkpoints_are_durable(tmp_path, fsynced):
    m = create_model(ModelConfig(embed_dim=32, depth=1, num_heads=2), 3)
    save_checkpoint(m, tmp_path / "base.safetensors", ["a", "b", "c"])
    _synced_then_renamed(fsynced, tmp_path / "base.safetensors")


def test_adapter_folders_are_durable(tmp_path, fsynced):
    from forgetting.lora import add_lora, save_sparse_adapter

    m = create_model(ModelConfig(embed_dim=32, depth=2, num_heads=2), 3)
    out = tmp_path / "adapters" / "req-0001"
    save_sparse_adapter(add_lora(m, 4, 4.0), [0], out, {"request_id": "req-0001"})
    tmp_dir = [p for p in fsynced if p.name.startswith(".req-0001.tmp-")]
    assert tmp_dir, fsynced
    inside = {p.name for p in fsynced if p.parent == tmp_dir[0]}
    assert {"adapter_model.safetensors", "adapter_config.json", "forgetting.json"} <= inside
    assert fsynced[-1] == out.parent  # the rename itself, last
