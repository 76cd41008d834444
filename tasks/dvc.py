"""DVC and git: plain functions, no Prefect (quick commands such as ``request cancel`` use
them directly; flows use the ``track`` task of ``tasks.versioning``).

DVC's public Python API (``dvc.api``) only reads. The supported way to write is the CLI; every
call here goes through what the CLI itself drives (``dvc.repo.Repo``, ``dvc.config.Config``)
in this process instead: measured here, 0.3 s for an add + push instead of 1.4 s as two CLI
processes, 0.02 s instead of 0.7 s for a status, and 0.8 s instead of 2.9 s for ``forget
init`` (four CLI processes). ``Repo`` is not a stable API, so DVC's version is locked
(requirements.lock) and the tests run every one of these calls.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import yaml

from .git import attached, push
from .git import git as _git

log = logging.getLogger("forgetting")


def quiet_staging_hints() -> None:
    """DVC's hints to stage its files in git ("To track the changes with git, run: ..."),
    twice a commit: the pipeline makes each commit itself, so they only tell a user to do what
    is already done."""
    logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)


def init_repo(root: Path, remote: Path) -> None:
    """git + DVC in ``root`` (kept if present), update checks off, a local default remote.

    In this process through ``dvc.repo.Repo.init`` and DVC's ``Config.edit``, what ``dvc init``,
    ``dvc config`` and ``dvc remote add`` run: four CLI processes took 2.2 of ``forget init``'s
    2.9 s here (the files written are the same)."""
    from dvc.repo import Repo

    if not (root / ".git").exists():
        _git(root, "init", "-q")
    if not (root / ".dvc").exists():
        # its "Initialized DVC repository" and "commit the changes" lines are for a user at
        # the CLI (`forget init` commits); and a process that set up DVC's log handler
        # (the tests' fork server) may hold a closed stream, where DVC raises on logging
        logging.getLogger("dvc.repo.init").setLevel(logging.WARNING)
        Repo.init(str(root)).close()
    remote.mkdir(parents=True, exist_ok=True)
    set_dvc_config(root, "repo", {"core": {"check_update": "false", "analytics": "false"}})
    set_dvc_config(root, "local", {"core": {"remote": "local"},
                                   "remote": {"local": {"url": str(remote)}}})


def set_dvc_config(root: Path, level: str, sections: dict[str, dict]) -> None:
    """Options into DVC's config at ``level`` ("repo": ``.dvc/config``, "local":
    ``.dvc/config.local``), as ``dvc config`` / ``dvc remote add -f`` / ``dvc remote modify``
    write them (a remote's section is replaced only where ``url`` is given)."""
    from dvc.config import Config

    with Config(str(root / ".dvc")).edit(level) as conf:
        for section, values in sections.items():
            if section == "remote":
                for name, opts in values.items():
                    if "url" in opts:
                        conf["remote"][name] = dict(opts)
                    else:
                        conf["remote"].setdefault(name, {}).update(opts)
            else:
                conf[section].update(values)


def _repo(root: Path):
    from dvc.repo import Repo

    # as `dvc --wait-for-lock`: a concurrent command waits for DVC's repo lock
    return Repo(str(root), _wait_for_lock=True)


def track_paths(root: str | Path, paths: list[str], message: str,
                extra: list[str] = ()) -> None:
    """``dvc add`` + ``dvc push`` the paths, then commit their pointer files and ``extra``
    plain files (``params.yaml``) to git in one commit."""
    r = Path(root).resolve()
    targets = [str(r / p) for p in paths]  # DVC reads relative targets from the cwd
    with _repo(r) as repo:
        repo.add(targets)
        # the pointer files as targets: DVC loads each directly, where a data path first had
        # it parse dvc.yaml and dvc.lock in search of a stage of that name (0.3 s a push)
        repo.push([f"{t}.dvc" for t in targets])
    pointers = [f"{p}.dvc" for p in paths] + [str(Path(p).parent / ".gitignore") for p in paths]
    commit(r, [*pointers, *extra], message)
    log.info(f"DVC tracked and pushed {', '.join(paths)}")


def commit(root: Path, paths: list[str], message: str) -> None:
    """git add + commit those of ``paths`` that exist, if anything changed."""
    paths = [p for p in paths if (Path(root) / p).exists()]
    if not paths:
        return
    _git(root, "add", "--", *paths)
    if _git(root, "status", "--porcelain", "--", *paths).strip():
        _git(root, "-c", "user.name=forgetting-pipeline", "-c", "user.email=pipeline@localhost",
             "commit", "-q", "-m", message, "--", *paths)
        if attached(Path(root)):  # a shared workspace: the commit goes to the remote at once
            push(Path(root))


def status_clean(root: Path) -> bool:
    """``dvc status`` has nothing to report (data matches its pointers)."""
    with _repo(Path(root).resolve()) as repo:
        return not repo.status()


def tracked_md5(root: Path, path: str, rev: str | None = None) -> str | None:
    """The md5 that ``<path>.dvc`` records, in the working tree or at a git revision."""
    pointer = f"{path}.dvc"
    if rev is None:
        f = Path(root) / pointer
        text = f.read_text() if f.is_file() else None
    else:
        res = subprocess.run(["git", "show", f"{rev}:{pointer}"], cwd=root, capture_output=True,
                             text=True)
        text = res.stdout if res.returncode == 0 else None
    if not text:
        return None
    outs = yaml.safe_load(text).get("outs") or [{}]
    return outs[0].get("md5")


def historic_md5s(root: Path, path: str) -> set[str]:
    """Every version of ``path`` that git history has pointed to."""
    revs = _git(root, "log", "--format=%H", "--", f"{path}.dvc").split()
    return {m for m in (tracked_md5(root, path, r) for r in revs) if m}


def object_paths(root: Path, md5: str) -> list[Path]:
    """Where DVC 3 keeps a file's object: the local cache and the default local remote (read
    through ``Repo`` in this process, as ``dvc cache dir`` and ``dvc remote`` read them)."""
    with _repo(root) as repo:
        out = [Path(repo.cache.local_cache_dir) / "files" / "md5" / md5[:2] / md5[2:]]
        remote = _default_remote_path(repo.config)
    if remote is not None:
        out.append(remote / "files" / "md5" / md5[:2] / md5[2:])
    return out


def _default_remote_path(config) -> Path | None:
    name = config["core"].get("remote")
    if not name or name not in config["remote"]:
        return None
    url = config["remote"][name]["url"]
    if "://" in url and not url.startswith("file://"):
        raise RuntimeError(f"remote {name!r} ({url}) is not a local directory; delete "
                           "the purged objects there with that storage's own tools")
    return Path(url.removeprefix("file://"))
