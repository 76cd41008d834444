"""The git server for the workspace repositories that workers clone (``git daemon``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .processes import wait_port


def start(stack, s: dict, creds: dict) -> None:
    """Unauthenticated and writable: for a stack on a trusted network; a team points
    workspaces at its own git server instead (docs/team.md)."""
    stack.git_root.mkdir(parents=True, exist_ok=True)
    proc = stack.spawn("git", ["git", "daemon", "--reuseaddr", f"--listen={s['host']}",
                               f"--port={s['ports']['git']}", f"--base-path={stack.git_root}",
                               "--export-all", "--enable=receive-pack", "--informative-errors",
                               str(stack.git_root)], {}, stack.git_root)
    wait_port("git", s["host"], s["ports"]["git"], stack.logs / "git.log", proc)


def create_repo(root: Path, name: str) -> Path:
    """A bare repository ``<name>.git`` on the git server (kept if it exists)."""
    repo = root / f"{name}.git"
    if not (repo / "HEAD").exists():
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(repo)],
                       check=True, capture_output=True)
    return repo
