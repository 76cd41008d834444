"""Team stack commands: ``forget stack up | status | down | env | attach | deploy`` and
``forget worker``. The services are in ``stack.py``; what a shared workspace does is in
``tasks.shared``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from . import console
from .pipeline import Root, _prefect, _ws, clear_errors, short

StackDir = Annotated[Path, typer.Option("--dir", envvar="FORGET_STACK_DIR",
                                        help="the stack's folder (data, logs, credentials)")]
stack_app = typer.Typer(help="The team stack: PostgreSQL, S3, Prefect, MLflow, git.",
                        no_args_is_help=True)


def _stack(d: Path):
    from forgetting_stack import DEFAULT_DIR, Stack

    return Stack((d or DEFAULT_DIR).expanduser().resolve())


def up(dir: StackDir = None,
       host: Annotated[str | None, typer.Option(help="address the services listen on")] = None,
       port_base: Annotated[int | None, typer.Option(help="first of 13 ports (default 17100)")]
       = None) -> None:
    """Start the stack (what is not running yet); print what clients export."""
    from tasks import environment

    environment.apply()
    st = _stack(dir)
    for line in st.up(host, port_base):
        typer.echo(line)
    typer.echo("")
    for what, where in st.ui().items():
        typer.echo(f"{what + ':':<13}{where}")
    typer.echo(f"\nClients and workers export (secrets in {st.client_file}, mode 0600):")
    for k, v in st.client_env().items():
        secret = any(w in k for w in ("PASSWORD", "SECRET", "AUTH_STRING", "LOCK_URL"))
        typer.echo(f"  export {k}={'***' if secret else v}")
    typer.echo(f"  (all at once: set -a; . {st.client_file}; set +a)")


def status(dir: StackDir = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Which services run and answer."""
    st = _stack(dir)
    s = st.status()
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        for name, v in s.items():
            state = "answers" if v["answers"] else "DOWN"
            typer.echo(f"{name:<9}{v['address']:<22}{state}"
                       + (f" (pid {v['pid']})" if v["pid"] else " (not started here)"))
    if not all(v["answers"] for v in s.values()):
        raise typer.Exit(1)


def down(dir: StackDir = None) -> None:
    """Stop what `up` started (nothing else); the data stays for the next `up`."""
    for line in _stack(dir).down():
        typer.echo(line)


def env(dir: StackDir = None) -> None:
    """Print the client exports, secrets included (for `eval "$(forget stack env)"`)."""
    typer.echo(_stack(dir).client_file.read_text(), nl=False)


def _need(*names: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        console.fail(f"{', '.join(missing)} not set: export the stack's client settings "
                     "first (`set -a; . <stack dir>/client.env; set +a`)")
    return {n: os.environ[n] for n in names}


def attach(root: Root = Path("."),
           git_url: Annotated[str | None, typer.Option(
               help="the workspace's git repository (default: on the stack's git server)")]
           = None) -> None:
    """Share a workspace through the stack: DVC remote on S3, git remote on the git server,
    every later commit pushed. Run it right after `forget init`, with the stack's exports,
    from any host (the stack's git server makes the repository on the first push)."""
    ws = _ws(root)
    from tasks import shared

    e = _need("MLFLOW_S3_ENDPOINT_URL", "FORGET_S3_BUCKET", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY")
    name = ws.name
    if git_url is None:
        git_url = f"{_need('FORGET_GIT_URL')['FORGET_GIT_URL']}/{name}.git"
        _need("FORGET_GIT_USERNAME", "FORGET_GIT_PASSWORD")
    shared.attach(ws, git_url, f"s3://{e['FORGET_S3_BUCKET']}/dvc/{name}",
                e["MLFLOW_S3_ENDPOINT_URL"], e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"])
    typer.echo(f"workspace {name!r} attached: git {git_url}, DVC s3://{e['FORGET_S3_BUCKET']}"
               f"/dvc/{name} (keys in .dvc/config.local only)")


def deploy(root: Root = Path("."),
           pool: Annotated[str, typer.Option(help="the work pool (made if missing)")] = "forgetting",
           device: Annotated[str | None, typer.Option(
               help="cuda: its workers train on the GPU (job variable FORGET_DEVICE)")] = None,
           interval: Annotated[int | None, typer.Option(
               help="also run every N seconds (picks up anything left over)")] = None) -> None:
    """Deploy the workspace's request flow to a process work pool."""
    ws = _ws(root)
    from tasks.git import attached
    from tasks.submissions import deployment_name

    if not attached(ws.root):
        console.fail("not attached to a stack: run `forget stack attach` first")
    _need("PREFECT_API_URL")
    _prefect()
    from flows.deploy import deploy

    deploy(ws, pool, device, interval)
    typer.echo(f"deployed {deployment_name(ws.name)} to work pool {pool!r}"
               + (f" (device {device})" if device else "")
               + f"; start workers with `forget worker --pool {pool}`")


def worker(pool: Annotated[str, typer.Option(help="the work pool to serve")] = "forgetting",
           dir: Annotated[Path, typer.Option(
               "--dir", help="this worker's own folder: its workspace clones")] = Path("."),
           name: Annotated[str | None, typer.Option(help="worker name (default: host)")] = None,
           limit: Annotated[int, typer.Option(help="flow runs at a time")] = 1) -> None:
    """A Prefect process worker (`prefect worker start`) whose flow runs clone workspaces
    from the git server into DIR and push their results back. Its flow runs fork from a
    process that imported the pipeline once (loaded before the worker starts)."""
    import sys

    from flows.deploy import HEARTBEAT_SECONDS
    from tasks import environment
    from tasks.git import WORKER_DIR
    from tasks.shared import LOCK_URL

    from .flow_runs import SOCKET_ENV, start_server

    d = dir.expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    _need("PREFECT_API_URL", "MLFLOW_TRACKING_URI", LOCK_URL)
    env = {**os.environ, WORKER_DIR: str(d)}
    env.setdefault("PREFECT_HOME", str(d / "prefect"))
    env.setdefault("DVC_SITE_CACHE_DIR", str(d / "dvc-site"))
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))
    for k, v in environment.OFFLINE.items():
        env.setdefault(k, v)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # the deployments' command (flows/deploy.py) is `python -m forgetting_cli.flow_runs`:
    # this interpreter's, wherever the worker was started from
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [environment.tool("prefect"), "worker", "start", "--pool", pool, "--type", "process",
           "--limit", str(limit)] + (["--name", name] if name else [])
    os.chdir(d)
    typer.echo("loading the pipeline once for this worker's flow runs")
    if sock := start_server(d, env=env):
        env[SOCKET_ENV] = sock
    else:
        typer.echo("the flow-run server did not start: each flow run imports the pipeline",
                   err=True)
    os.execve(cmd[0], cmd, env)


def backup(dest: Annotated[Path, typer.Argument(help="a new folder for the backup")],
           dir: StackDir = None,
           secrets: Annotated[bool, typer.Option(
               "--secrets", help="also the stack's credentials and users' S3 keys")] = False
           ) -> None:
    """Copy the stack's databases, S3 bucket, git repositories and users into a new folder."""
    from forgetting_stack import backup as b

    m = b.backup(_stack(dir), dest, secrets)
    typer.echo(f"backed up to {dest}: {len(m['databases'])} databases, {m['s3_objects']} S3 "
               f"objects, {len(list((dest / 'git').glob('*.bundle')))} git repositories"
               + (", secrets included (keep it private)" if secrets else ", no secrets"))


def restore(src: Annotated[Path, typer.Argument(help="a folder `forget stack backup` made")],
            dir: StackDir = None,
            host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
            port_base: Annotated[int | None, typer.Option(help="first of its ports")] = None
            ) -> None:
    """Restore a backup into an empty stack folder and start it (then `attach` and `deploy`
    each workspace again: their addresses changed if host or ports did)."""
    from forgetting_stack import backup as b

    st = _stack(dir)
    for line in b.restore(st, src, host, port_base):
        typer.echo(line)
    typer.echo(f"restored {src} into {st.dir}; clients export {st.client_file}")


user_app = typer.Typer(help="People and their roles: reader, submitter, operator.",
                       no_args_is_help=True)
Role = Annotated[str, typer.Option(help="reader | submitter | operator (forgetting_stack.roles)")]


def user_add(name: Annotated[str, typer.Argument(help="lower-case login name")],
             role: Role = "reader", dir: StackDir = None,
             workspace: Annotated[str, typer.Option(help="the workspace's name")] = "forgetting"
             ) -> None:
    """Add a user with a role on a workspace (git, MLflow, S3); writes their exports file."""
    from forgetting_stack import roles

    path = roles.add(_stack(dir), name, role, workspace)
    typer.echo(f"{name} ({role}) added; their exports, secrets included: {path} (mode 0600)")


def user_list(dir: StackDir = None) -> None:
    """Who may log in, and their roles."""
    for name, role in _stack(dir).users().roles().items():
        typer.echo(f"{name:<24}{role}")


def user_remove(name: str, dir: StackDir = None) -> None:
    """Remove a user from git, MLflow and S3."""
    from forgetting_stack import roles

    roles.remove(_stack(dir), name)
    typer.echo(f"{name} removed")


def register(app: typer.Typer) -> None:
    for fn in (up, status, down, env, attach, deploy, backup, restore):
        stack_app.command(short_help=short(fn))(clear_errors(fn))
    for cmd, fn in (("add", user_add), ("list", user_list), ("remove", user_remove)):
        user_app.command(cmd, short_help=short(fn))(clear_errors(fn))
    stack_app.add_typer(user_app, name="user")
    app.add_typer(stack_app, name="stack")
    app.command(short_help=short(worker))(clear_errors(worker))
