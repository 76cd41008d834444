"""Durable atomic writes: a crash or a power cut leaves the old file or the new one, never an
empty or half-written one.

A rename alone is not enough: without ``fsync`` of the file before the rename, the rename can
reach the disk before the data (an empty ledger entry after a power cut), and without ``fsync``
of the directory the rename itself can be lost.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Every file and directory under ``path`` (a freshly written folder, before its rename)."""
    path = Path(path)
    if path.is_file():
        fsync_path(path)
        return
    for p in sorted(path.rglob("*")):
        fsync_path(p)
    fsync_path(path)


def temp_sibling(path: Path) -> Path:
    """A temp name next to ``path`` (same filesystem, so the rename is atomic); recovery
    recognises the ``.tmp-`` marker."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """fsync ``tmp`` (file or folder), rename it to ``path``, fsync the parent directory."""
    fsync_tree(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a sibling temp file, then make it ``path`` durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        replace_durably(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, obj) -> None:
    """Indented, key-sorted JSON (stable diffs under DVC and git); unknown types as str."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
