"""git in a workspace, and the settings that make it a clone of a shared one (``forget stack``):
``forgetting.push`` (each commit goes to ``origin`` at once) and ``forgetting.worker`` (a
worker's own clone, reset to the remote rather than merged)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

WORKER_DIR = "FORGET_WORKER_DIR"  # a worker's own folder, where it clones workspaces
# git asks this helper for the stack's user and token: they stay in the environment
# (client.env), never in a file of the workspace. The empty entry before it drops the helpers
# of the user's own config (a `store` helper would write the token to ~/.git-credentials).
CREDENTIAL_HELPER = ('!f() { test "$1" = get && test -n "$FORGET_GIT_PASSWORD" || exit 0; '
                     'echo "username=$FORGET_GIT_USERNAME"; echo "password=$FORGET_GIT_PASSWORD"; }; f')
CREDENTIALS = ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}"]


def _env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # fail, never wait for a password


def git(root: Path, *args: str) -> str:
    res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=_env())
    if res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {root}: {res.stderr.strip()[-400:]}")
    return res.stdout


def attached(root: Path) -> bool:
    """The workspace pushes to a shared git remote (``forget stack attach`` or a worker's
    clone)."""
    res = subprocess.run(["git", "config", "--get", "forgetting.push"], cwd=root,
                         capture_output=True, text=True)
    return res.stdout.strip() == "true"


def is_worker_clone(root: Path) -> bool:
    res = subprocess.run(["git", "config", "--get", "forgetting.worker"], cwd=root,
                         capture_output=True, text=True)
    return res.stdout.strip() == "true"


def push(root: Path) -> None:
    """``git push`` the current branch to ``origin``'s main (called after each commit), while
    this process still holds the stack's run lock (``lock_guard``)."""
    from .lock_guard import check

    check()
    try:
        git(root, "push", "-q", "origin", "HEAD:refs/heads/main")
    except RuntimeError:  # someone pushed meanwhile (outside the lock): rebase once
        git(root, "pull", "-q", "--rebase", "origin", "main")
        git(root, "push", "-q", "origin", "HEAD:refs/heads/main")


def checkout(repo_url: str, name: str) -> Path:
    """A worker's own clone of workspace ``name`` (under ``$FORGET_WORKER_DIR``), made once."""
    base = Path(os.environ.get(WORKER_DIR) or Path.cwd()).resolve()
    root = base / "workspaces" / name
    if not (root / ".git").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        ours = on_stack_git(repo_url)
        res = subprocess.run(["git", *(CREDENTIALS if ours else []), "clone", "-q", repo_url,
                              str(root)], capture_output=True, text=True, env=_env())
        if res.returncode != 0:
            raise RuntimeError(f"git clone {repo_url} failed: {res.stderr.strip()[-400:]}")
        if ours:
            use_credentials(root)
        for k in ("forgetting.push", "forgetting.worker"):
            git(root, "config", k, "true")
    return root


def on_stack_git(url: str) -> bool:
    """``url`` is on the stack's git server (``FORGET_GIT_URL``): its login comes from the
    environment; another server keeps the user's own git credentials."""
    base = os.environ.get("FORGET_GIT_URL")
    return bool(base) and url.startswith(base.rstrip("/") + "/")


def use_credentials(root: Path) -> None:
    """The workspace's git asks ``CREDENTIAL_HELPER`` (and only it) for the server's login."""
    git(root, "config", "--replace-all", "credential.helper", "")
    git(root, "config", "--add", "credential.helper", CREDENTIAL_HELPER)
