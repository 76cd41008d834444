"""Pipeline commands: init, ingest, pretrain, request add/cancel, run, status, report, purge,
promote, rollback, serve, demo.

Each command imports only what it needs, after the workspace's offline settings: reading the
ledger or the registry starts no Prefect server and loads no torch, so ``status``, ``report``
and ``request add`` answer in about a second. Every command but ``init`` and ``demo`` checks
that it runs in a workspace, and errors end in one ``error:`` line and exit code 2
(``--verbose`` shows the traceback and Prefect's own error logs).
"""

from __future__ import annotations

import functools
import json
import os
import traceback
from pathlib import Path
from typing import Annotated

import typer
import yaml

from . import console

Root = Annotated[Path, typer.Option("--root", envvar="FORGET_ROOT",
                                    help="workspace (params.yaml, data/, .forgetting/)")]


def _ws(root: Path, require: bool = True):
    from tasks import environment
    from tasks.workspace import Workspace

    ws = Workspace.at(root)
    environment.apply(ws.state if ws.exists or not require else None)
    if require:
        ws.require()
    ws.config()  # a bad params.yaml stops every command up front, naming the field
    return ws


def _prefect():
    """Import Prefect (for commands that run flows) and keep its error tracebacks off the
    console unless --verbose: the error line says it, the flow run's logs keep it."""
    import prefect.main  # noqa: F401  (Prefect's logging is set up there)

    console.quiet_prefect_errors()


def init(root: Root = Path(".")) -> None:
    """git + DVC repo with a local remote, and a params.yaml with the defaults."""
    ws = _ws(root, require=False)
    from forgetting.config import Config, dump_config
    from tasks.dvc import commit, init_repo
    from tasks.environment import apply

    ws.root.mkdir(parents=True, exist_ok=True)
    init_repo(ws.root, ws.dvc_remote)
    apply(ws.state)
    if not ws.params.exists():
        ws.write_params(dump_config(Config()))
    gi = ws.root / ".gitignore"
    if ".forgetting/" not in (gi.read_text() if gi.exists() else ""):
        with gi.open("a") as f:
            f.write("/.forgetting/\n")
    commit(ws.root, [".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "params.yaml"],
           "forget init: DVC, params.yaml")
    typer.echo(f"workspace ready at {ws.root}")


def ingest(root: Root = Path("."),
           source: Annotated[str | None, typer.Option(
               help="sklearn-digits, fashion-mnist (Debian's dataset-fashion-mnist), an "
                    "ImageFolder directory or a .parquet file (default: data.source in "
                    "params.yaml)")] = None,
           resize: Annotated[bool, typer.Option(
               "--resize", help="scale images of another size to data.image_size")] = False,
           channels: Annotated[bool, typer.Option(
               "--channels", help="turn colour images grey when model.in_chans is 1")] = False,
           skip_nested: Annotated[bool, typer.Option(
               "--skip-nested", help="leave out images in nested class sub-folders")] = False,
           ) -> None:
    """Import a dataset to data/dataset.parquet; record the source (and any allowed lossy
    change) in params.yaml; version both. Says what it did: images per class, files skipped
    and why, resizes, channel conversions."""
    ws = _ws(root)
    from forgetting.data import BUILTIN

    source = source or ws.config().data.source
    if source not in BUILTIN and Path(source).exists():
        source = str(Path(source).resolve())  # params.yaml must not depend on the cwd
    allow = {k: True for k, v in (("resize", resize), ("convert_channels", channels),
                                  ("skip_nested", skip_nested)) if v}
    _prefect()
    from flows.ingest import ingest_flow

    info = ingest_flow(str(ws.root), source, allow)
    for line in info["summary"]:
        typer.echo(f"  {line}")
    typer.echo(f"dataset version {info['content_hash'][:12]}: {len(info['classes'])} classes, "
               f"{info['image_size']}x{info['image_size']}, {info['channels']} channel(s); "
               f"source recorded in params.yaml")


def pretrain(root: Root = Path("."),
             checkpoint: Annotated[Path | None, typer.Option(
                 help="use this pre-trained model instead of pretraining: a timm state dict "
                      "(.safetensors, weights-only .pt, timm train.py checkpoint) or ours")] = None,
             arch: Annotated[str | None, typer.Option(
                 help="timm architecture of --checkpoint (e.g. vit_small_patch16_224); read "
                      "from the checkpoint when it names one")] = None,
             classes: Annotated[Path | None, typer.Option(
                 exists=True, dir_okay=False,
                 help="class of each head row of --checkpoint, one per line (default: the "
                      "dataset's order)")] = None,
             margin: Annotated[str, typer.Option(
                 help="kind of a bias-free (face) head: cosface or arcface")] = "cosface",
             num_heads: Annotated[int | None, typer.Option(
                 help="attention heads of --checkpoint (no weights tell: needed unless its "
                      "config.json or train.py args say, or it has its arch's own shape)")
             ] = None,
             global_pool: Annotated[str | None, typer.Option(
                 help="token pooling of --checkpoint (token, avg, ...; as --num-heads)")] = None,
             model_arg: Annotated[list[str] | None, typer.Option(
                 help="KEY=VALUE: any other argument of timm's VisionTransformer the "
                      "checkpoint was built with (VALUE read as JSON; repeat the flag)")] = None,
             min_val_accuracy: Annotated[float | None, typer.Option(
                 help="refuse an imported model under this validation accuracy (default: "
                      "twice chance)")] = None,
             accept: Annotated[bool, typer.Option(
                 "--accept", help="import a model under --min-val-accuracy anyway")] = False,
             ) -> None:
    """Pretrain and register a base model (only when none is in production), or import
    your own with --checkpoint: every setting it is built with is printed with its source."""
    ws = _ws(root)
    if margin not in ("cosface", "arcface"):
        raise typer.BadParameter(f"--margin must be cosface or arcface, not {margin!r}")
    args = {}
    for item in model_arg or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--model-arg {item!r}: write KEY=VALUE")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw  # a bare word: a string (e.g. act_layer=gelu_tanh)
    _prefect()
    from flows.pretrain import pretrain_flow

    version = pretrain_flow(str(ws.root), str(checkpoint.resolve()) if checkpoint else None,
                            arch, str(classes.resolve()) if classes else None, margin,
                            num_heads, global_pool, args or None, min_val_accuracy, accept)
    typer.echo(f"production model: v{version}")


def _method_specs():
    from forgetting.methods import specs

    return specs()


request_app = typer.Typer(help="Erasure requests.", no_args_is_help=True)


def request_add(
    classes: Annotated[list[str] | None, typer.Argument(help="classes to forget")] = None,
    shots: Annotated[int | None, typer.Option(help="k images per class (GS-LoRA++ few-shot)")] = None,
    method: Annotated[str | None, typer.Option(
        help="one of: " + "; ".join(f"{s.name} ({s.summary})" for s in _method_specs())
             + ". Default: forget.method in params.yaml")] = None,
    reason: str = "",
    requester: str = "cli",
    file: Annotated[Path | None, typer.Option(help="a YAML/JSON request file instead")] = None,
    root: Root = Path("."),
) -> None:
    """Validate a request against the dataset, the model and the queue, then queue it."""
    ws = _ws(root)
    from pydantic import ValidationError

    from tasks.ledger import RequestSpec
    from tasks.requests import add_request

    try:
        if file is not None:
            raw = yaml.safe_load(file.read_text())
            if not isinstance(raw, dict):
                console.fail(f"request file {file} must hold a mapping")
            spec = RequestSpec.model_validate(raw)
        else:
            spec = RequestSpec(classes=classes or [], shots=shots, method=method, reason=reason,
                               requester=requester)
        if spec.method is None:  # the workspace's default method, recorded with the request
            spec.method = ws.config().forget.method
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'request'}: {err['msg']}"
                           for err in e.errors())
        console.fail(f"invalid request: {fields}")
    except (yaml.YAMLError, OSError) as e:
        console.fail(str(e))
    from tasks import shared, submissions
    from tasks.git import attached

    if attached(ws.root):  # a shared workspace: submitted to its deployment
        if not os.environ.get("PREFECT_API_URL"):
            console.fail("this workspace is shared through a stack: export its settings "
                         "(PREFECT_API_URL, ...) to submit requests")
        shared.sync(ws.root)  # check against the dataset, model and queue the workers see
        _prefect()
        run = submissions.submit(ws, spec)
        typer.echo(f"submitted {', '.join(spec.classes)} as flow run {run}; the worker that "
                   "runs next queues it (as the next req-id) and processes the queue in order")
        return
    req = add_request(ws, spec)
    typer.echo(f"queued {req.id}: {', '.join(req.classes)}")


def request_cancel(
    request_id: str,
    reason: Annotated[str, typer.Option(help="why; kept in the request's audit record")] = "",
    requester: str = "cli",
    root: Root = Path("."),
) -> None:
    """Take a pending request off the queue (one that keeps failing blocks later ones)."""
    ws = _ws(root)
    from tasks.dvc import track_paths
    from tasks.git import attached
    from tasks.requests import cancel_request

    if attached(ws.root):
        console.fail("this workspace is shared through a stack: cancel the request's flow run "
                     "in Prefect before a worker queues it, or `forget rollback` after it ran")

    req = cancel_request(ws, request_id, reason, requester)
    track_paths(ws.root, [ws.rel(ws.requests)], f"request {req.id}: cancelled ({reason})")
    typer.echo(f"cancelled {req.id}: {reason}")


def run(root: Root = Path(".")) -> None:
    """Process the pending requests now, in order."""
    ws = _ws(root)
    _prefect()
    from flows.process_requests import process_requests_flow

    for r in process_requests_flow(str(ws.root)):
        line = f"{r['id']}: {r['status']}"
        if r.get("model_version") is not None:
            line += f" (model v{r['model_version']}, Acc_f {r['acc_f']:.3f}, Acc_r {r['acc_r']:.3f})"
        if r.get("gate") not in (None, "passed"):
            line += f"; gate: {r['gate']}"
        if r.get("error"):
            line += f": {r['error']}"
        typer.echo(line)


def status_dict(ws) -> dict:
    from tasks.registry_reader import reader
    from tasks.requests import ledger

    reg = reader(ws)
    report = ws.base_checkpoint.parent / "base.json"  # tasks.model_tasks.BASE_REPORT
    return {
        "model": ws.model_name, "tracking_uri": ws.tracking_uri,
        # the base model: where it came from, its val accuracy, its preprocessing
        "base": json.loads(report.read_text()) if report.is_file() else None,
        "production_version": reg.alias_version("production"),
        "candidate_version": reg.alias_version("candidate"),
        "requests": [{"id": r.id, "classes": r.classes, "status": r.status,
                      "model_version": r.model_version, "acc_f": r.metrics.get("acc_f"),
                      "acc_r": r.metrics.get("acc_r"), "h_mean": r.metrics.get("h_mean"),
                      "shots": r.shots, "reason": r.reason, "requester": r.requester,
                      "created_at": r.created_at, "updated_at": r.updated_at, "gate": r.gate,
                      "error": r.error, "adapter_sha256": r.adapter_sha256,
                      "dataset_version": r.dataset_version, "parent_version": r.parent_version,
                      "mlflow_run_id": r.mlflow_run_id, "method": r.method,
                      "attempts": r.attempts, "history": r.history,
                      "cancel_reason": r.cancel_reason,
                      "metrics": r.metrics, "purge": r.purge.model_dump() if r.purge else None}
                     for r in ledger(ws).all()],
    }


def status(root: Root = Path("."), as_json: Annotated[bool, typer.Option("--json")] = False
           ) -> None:
    """Production model and every request with its state and metrics."""
    ws = _ws(root)
    from tasks import shared
    from tasks.git import attached

    if attached(ws.root):  # a shared workspace: the ledger as the workers left it
        shared.sync(ws.root, [ws.rel(ws.requests)])
    st = status_dict(ws)
    if as_json:
        typer.echo(json.dumps(st))
        return
    prod = st["production_version"]
    typer.echo(f"model {st['model']}: production "
               f"{'v' + str(prod) if prod else 'none yet (run `forget pretrain`)'} "
               f"(tracking {st['tracking_uri']})")
    if base := st["base"]:
        typer.echo(f"base model (v1): {base['origin']}, val accuracy {base['val_acc']:.3f} "
                   f"on {base['val_images']} images; preprocessing: "
                   f"{'; '.join(base['preprocessing']['steps'])}")
    for r in st["requests"]:
        m = "" if r["acc_f"] is None else (f" Acc_f {r['acc_f']:.3f} Acc_r {r['acc_r']:.3f} "
                                           f"H {r['h_mean']:.3f}")
        typer.echo(f"{r['id']} {','.join(r['classes']):<20} {r['status']:<12} "
                   f"v{r['model_version'] or '-'}{m}")


def promote(version: int, reason: Annotated[str, typer.Option()] = "manual promotion",
            root: Root = Path(".")) -> None:
    """Move the production alias to VERSION (waits for a run in progress to finish)."""
    ws = _ws(root)
    from tasks import registry
    from tasks.locks import run_lock

    c = registry.client(ws)
    try:
        c.get_model_version(c.model_name, str(version))
    except Exception:
        console.fail(f"no version {version} of {c.model_name}")
    from tasks.model_tasks import export_production

    with run_lock(ws, "promoting"):
        registry.set_alias(c, "production", version, reason)
        registry.with_backoff(lambda: export_production(ws, version), "exporting the model")
    typer.echo(f"production -> v{version}")


def rollback(reason: Annotated[str, typer.Option()] = "rollback", root: Root = Path(".")) -> None:
    """Move production back to the version it had before (waits for a run in progress)."""
    ws = _ws(root)
    from tasks import registry
    from tasks.locks import run_lock
    from tasks.model_tasks import export_production

    with run_lock(ws, "rolling back"):
        try:
            cur, prev = registry.rollback(registry.client(ws), reason)
        except ValueError as e:
            console.fail(str(e))
        registry.with_backoff(lambda: export_production(ws, prev), "exporting the model")
    typer.echo(f"production -> v{prev} (rolled back from v{cur})")


def report(request_id: str,
           out: Annotated[Path | None, typer.Option(
               help="a new or empty folder, or one an earlier `forget report` wrote "
                    "(default: ./report-ID)")] = None,
           root: Root = Path(".")) -> None:
    """Write a request's report (Markdown, HTML, PNG plots) to a folder; never into a folder
    that holds anything else."""
    ws = _ws(root)
    from tasks.reports import purge_note
    from tasks.requests import ledger

    try:
        req = ledger(ws).get(request_id)
    except KeyError as e:
        console.fail(str(e.args[0]))
    stored = ws.report_dir(req.id) / "report.json"
    if not stored.is_file():
        console.fail(f"{req.id} has no report yet (status {req.status})")
    from forgetting.report import render_again

    dest = out or Path(f"report-{req.id}")
    data = json.loads(stored.read_text())
    note = purge_note(ws, data["request"]["classes"] + data.get("earlier", []))
    path = render_again(stored, dest, **({"purged_note": note} if note else {}))
    typer.echo(f"{path} (and report.html, plots) written")


def purge(request_id: str, root: Root = Path(".")) -> None:
    """Remove a done request's images: new DVC-tracked dataset version, old copies deleted from
    the DVC cache and remote; the audit record keeps only their hashes."""
    ws = _ws(root)
    _prefect()
    from flows.purge import purge_flow

    try:
        rec = purge_flow(str(ws.root), request_id)
    except KeyError as e:
        console.fail(str(e.args[0]))
    typer.echo(f"purged {rec['images']} images of {request_id}: dataset "
               f"{rec['dataset_version_before'][:12]} -> {rec['dataset_version_after'][:12]}, "
               f"{rec['cache_objects_removed']} cached objects removed; last Acc_o before "
               f"the purge {rec['last_acc_o']}")


def serve(root: Root = Path("."), cron: str | None = None,
          interval: Annotated[int | None, typer.Option(help="seconds")] = None,
          name: str = "process-requests") -> None:
    """Serve the request-processing flow as a Prefect deployment on a schedule.

    Needs a real Prefect server: `prefect server start`, then PREFECT_API_URL.
    """
    ws = _ws(root)
    if cron is None and interval is None:
        console.fail("give --cron EXPR or --interval SECONDS")
    _prefect()
    from flows.process_requests import process_requests_flow

    # limit=1: one run process at a time; without it, runs that wait for the run lock pile up
    # (one Python+torch process per tick) until memory runs out (measured: SIGKILLed runs)
    process_requests_flow.serve(name=name, cron=cron, interval=interval, limit=1,
                                parameters={"root": str(ws.root)})


def ui_commands(ws) -> dict[str, str]:
    """Commands that open what the demo made, printed so that they work as printed: absolute
    tool paths (no activated virtualenv needed) and the offline settings in front."""
    from tasks.environment import shell_command, tool

    # `mlflow models serve --env-manager local` starts `uvicorn` from PATH: the venv's bin first
    venv_bin = str(Path(tool("mlflow")).parent)
    return {
        # one worker process, not MLflow's four (each imports MLflow): a UI for one person
        "MLflow UI": shell_command(["mlflow", "ui", "--backend-store-uri", ws.tracking_uri,
                                    "--host", "127.0.0.1", "--port", "5000", "--workers", "1"]),
        "Prefect UI": shell_command(["prefect", "server", "start", "--host", "127.0.0.1",
                                     "--port", "4200"], state=ws.state),
        "DVC": shell_command(["dvc", "status"], cwd=ws.root),
        "Serve production": shell_command(
            ["mlflow", "models", "serve", "-m", f"models:/{ws.model_name}@production",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", "5001"],
            extra_env={"MLFLOW_TRACKING_URI": ws.tracking_uri,
                       "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin"}),
    }


def demo(root: Root = Path(".forgetting/demo")) -> None:
    """Embedded defaults end to end: ingest the bundled digits, pretrain, queue and process
    the requests of params.yaml (by default two, the second 4-shot), print the results and
    where to look. A request may end `failed_gate` (its model is registered, production
    stays): that is the gates doing their job, shown in its report."""
    init(root)
    ws = _ws(root)
    if not ws.dataset.exists():
        ingest(root)
    pretrain(root)
    from tasks.ledger import RequestSpec
    from tasks.requests import add_request, ledger

    if not ledger(ws).all():
        for i, r in enumerate(ws.config().requests, 1):
            spec = RequestSpec(**r.model_dump(), reason=f"demo request {i}", requester="demo")
            typer.echo(f"queued {add_request(ws, spec).id}: {', '.join(spec.classes)}")
    run(root)
    status(root)
    typer.echo("")
    for what, cmd in ui_commands(ws).items():
        typer.echo(f"{what + ':':<12}{cmd}")


def known_errors() -> tuple[type[BaseException], ...]:
    """Failures with a message meant for the user; imported only when one happened (some
    live in modules that load torch)."""
    from forgetting.config import ConfigError
    from forgetting.data import DataError
    from forgetting.model import CheckpointError
    from forgetting.report import ReportError
    from forgetting.requests import RequestError
    from forgetting_stack import StackError
    from tasks.errors import StackSettingsMissing
    from tasks.ledger import StaleRequest
    from tasks.locks import Busy
    from tasks.registry_reader import ServiceUnavailable
    from tasks.workspace import NotAWorkspace

    return (ConfigError, DataError, CheckpointError, RequestError, ReportError, NotAWorkspace,
            Busy, StaleRequest, ServiceUnavailable, StackError, StackSettingsMissing)


def clear_errors(fn):
    """Known failures (bad input, a missing workspace, an unreachable server) end the command
    with one ``error:`` line and exit code 2; anything else with one line and exit code 1.
    ``--verbose`` prints the traceback first."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:
            if console.verbose():
                traceback.print_exc()
            if isinstance(e, known_errors()):
                console.fail(str(e))
            if isinstance(e, RuntimeError) and "Failed to reach API" in str(e):
                console.fail(f"Prefect API unreachable: {e}; nothing was started, queued "
                             "requests stay pending")
            console.fail(f"unexpected {type(e).__name__}: {e}"
                         + ("" if console.verbose() else " (--verbose shows the traceback)"),
                         code=1)

    return wrapper


def short(fn) -> str:
    """A command's line in the list: the first sentence of its docstring, whole."""
    text = " ".join((fn.__doc__ or "").split())
    return text.split(". ")[0].rstrip(".") + "."


def register_commands(app: typer.Typer) -> None:
    for fn in (demo, init, ingest, pretrain):
        app.command(short_help=short(fn))(clear_errors(fn))
    request_app.command("add", short_help=short(request_add))(clear_errors(request_add))
    request_app.command("cancel", short_help=short(request_cancel))(clear_errors(request_cancel))
    app.add_typer(request_app, name="request")
    for fn in (run, status, report, promote, rollback, purge, serve):
        app.command(short_help=short(fn))(clear_errors(fn))
    from .repro import app as repro_app

    app.add_typer(repro_app, name="repro")

