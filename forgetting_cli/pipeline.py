"""Pipeline commands: init, ingest, pretrain, request add, run, status, promote, rollback,
serve, demo. Prefect and MLflow are imported only after the workspace's offline settings."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

Root = Annotated[Path, typer.Option("--root", envvar="FORGET_ROOT",
                                    help="workspace (params.yaml, data/, .forgetting/)")]


def _ws(root: Path):
    from tasks.workspace import Workspace, offline_environment

    ws = Workspace.at(root)
    offline_environment(ws)
    ws.config()  # a bad params.yaml stops every command up front, naming the field
    return ws


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def init(root: Root = Path(".")) -> None:
    """git + DVC repo with a local remote, and a params.yaml with the defaults."""
    ws = _ws(root)
    from forgetting.config import Config, dump_config
    from tasks.versioning import commit, init_repo

    ws.root.mkdir(parents=True, exist_ok=True)
    init_repo(ws.root, ws.dvc_remote)
    if not ws.params.exists():
        ws.params.write_text(dump_config(Config()))
    gi = ws.root / ".gitignore"
    if ".forgetting/" not in (gi.read_text() if gi.exists() else ""):
        with gi.open("a") as f:
            f.write("/.forgetting/\n")
    commit(ws.root, [".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "params.yaml"],
           "forget init: DVC, params.yaml")
    typer.echo(f"workspace ready at {ws.root}")


def ingest(root: Root = Path("."),
           source: Annotated[str, typer.Option(help="sklearn-digits, an ImageFolder directory "
                                               "or a .parquet file")] = "sklearn-digits") -> None:
    """Import a dataset to data/dataset.parquet and version it with DVC."""
    ws = _ws(root)
    from flows.ingest import ingest_flow

    info = ingest_flow(str(ws.root), source)
    typer.echo(f"dataset version {info['content_hash'][:12]}, {len(info['classes'])} classes")


def pretrain(root: Root = Path("."),
             checkpoint: Annotated[Path | None, typer.Option(
                 help="use this pre-trained model (.safetensors, or a weights-only .pt state "
                      "dict of the params.yaml model) instead of pretraining")] = None) -> None:
    """Pretrain and register a base model (only when none is in production)."""
    ws = _ws(root)
    from flows.pretrain import pretrain_flow
    from forgetting.model import CheckpointError

    try:
        version = pretrain_flow(str(ws.root), str(checkpoint.resolve()) if checkpoint else None)
    except CheckpointError as e:
        _fail(str(e))
    typer.echo(f"production model: v{version}")


request_app = typer.Typer(help="Erasure requests.", no_args_is_help=True)


def request_add(
    classes: Annotated[list[str] | None, typer.Argument(help="classes to forget")] = None,
    shots: Annotated[int | None, typer.Option(help="k images per class (GS-LoRA++ few-shot)")] = None,
    method: Annotated[str, typer.Option(help="gs-lora or gs-lora++")] = "gs-lora++",
    reason: str = "",
    requester: str = "cli",
    file: Annotated[Path | None, typer.Option(help="a YAML/JSON request file instead")] = None,
    root: Root = Path("."),
) -> None:
    """Validate a request against the dataset, the model and the queue, then queue it."""
    ws = _ws(root)
    from pydantic import ValidationError

    from forgetting.data import DataError
    from forgetting.train import RequestError
    from tasks.ledger import RequestSpec
    from tasks.requests import add_request

    try:
        if file is not None:
            raw = yaml.safe_load(file.read_text())
            if not isinstance(raw, dict):
                _fail(f"request file {file} must hold a mapping")
            spec = RequestSpec.model_validate(raw)
        else:
            spec = RequestSpec(classes=classes or [], shots=shots, method=method, reason=reason,
                               requester=requester)
        req = add_request(ws, spec)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'request'}: {err['msg']}"
                           for err in e.errors())
        _fail(f"invalid request: {fields}")
    except (RequestError, DataError, yaml.YAMLError, OSError) as e:
        _fail(str(e))
    typer.echo(f"queued {req.id}: {', '.join(req.classes)}")


def run(root: Root = Path(".")) -> None:
    """Process the pending requests now, in order."""
    ws = _ws(root)
    from flows.process_requests import process_requests_flow

    for r in process_requests_flow(str(ws.root)):
        typer.echo(f"{r['id']}: {r['status']} (model v{r.get('model_version', '-')})")


def status_dict(ws) -> dict:
    from tasks import registry
    from tasks.requests import ledger

    c = registry.client(ws)
    return {
        "model": registry.MODEL_NAME, "tracking_uri": ws.tracking_uri,
        "production_version": registry.alias_version(c, "production"),
        "candidate_version": registry.alias_version(c, "candidate"),
        "requests": [{"id": r.id, "classes": r.classes, "status": r.status,
                      "model_version": r.model_version, "acc_f": r.metrics.get("acc_f"),
                      "acc_r": r.metrics.get("acc_r"), "h_mean": r.metrics.get("h_mean"),
                      "shots": r.shots, "reason": r.reason, "requester": r.requester,
                      "created_at": r.created_at, "updated_at": r.updated_at, "gate": r.gate,
                      "error": r.error, "adapter_sha256": r.adapter_sha256,
                      "dataset_version": r.dataset_version, "parent_version": r.parent_version,
                      "mlflow_run_id": r.mlflow_run_id, "method": r.method,
                      "attempts": r.attempts, "history": r.history,
                      "metrics": r.metrics, "purge": r.purge.model_dump() if r.purge else None}
                     for r in ledger(ws).all()],
    }


def status(root: Root = Path("."), as_json: Annotated[bool, typer.Option("--json")] = False
           ) -> None:
    """Production model and every request with its state and metrics."""
    ws = _ws(root)
    st = status_dict(ws)
    if as_json:
        typer.echo(json.dumps(st))
        return
    typer.echo(f"model {st['model']} production v{st['production_version']} "
               f"(tracking {st['tracking_uri']})")
    for r in st["requests"]:
        m = "" if r["acc_f"] is None else (f" Acc_f {r['acc_f']:.3f} Acc_r {r['acc_r']:.3f} "
                                           f"H {r['h_mean']:.3f}")
        typer.echo(f"{r['id']} {','.join(r['classes']):<20} {r['status']:<12} "
                   f"v{r['model_version'] or '-'}{m}")


def promote(version: int, reason: Annotated[str, typer.Option()] = "manual promotion",
            root: Root = Path(".")) -> None:
    """Move the production alias to VERSION."""
    ws = _ws(root)
    from tasks import registry

    c = registry.client(ws)
    try:
        c.get_model_version(registry.MODEL_NAME, str(version))
    except Exception:
        _fail(f"no version {version} of {registry.MODEL_NAME}")
    registry.set_alias(c, "production", version, reason)
    typer.echo(f"production -> v{version}")


def rollback(reason: Annotated[str, typer.Option()] = "rollback", root: Root = Path(".")) -> None:
    """Move production back to the version it had before."""
    ws = _ws(root)
    from tasks import registry

    c = registry.client(ws)
    hist = json.loads(c.get_registered_model(registry.MODEL_NAME).tags.get(
        "production_history", "[]"))
    if len(hist) < 2:
        _fail("no earlier production version to roll back to")
    prev = hist[-2]
    c.set_registered_model_alias(registry.MODEL_NAME, "production", str(prev))
    c.set_model_version_tag(registry.MODEL_NAME, str(hist[-1]), "rolled_back_reason", reason)
    c.set_registered_model_tag(registry.MODEL_NAME, "production_history", json.dumps(hist[:-1]))
    typer.echo(f"production -> v{prev} (rolled back from v{hist[-1]})")


def report(request_id: str,
           out: Annotated[Path | None, typer.Option(help="folder to write (default: ./report-ID)")]
           = None, root: Root = Path(".")) -> None:
    """Write a request's report (Markdown, HTML, PNG plots) to a folder."""
    ws = _ws(root)
    from forgetting.report import render_again
    from tasks.requests import ledger

    try:
        req = ledger(ws).get(request_id)
    except KeyError as e:
        _fail(str(e.args[0]))
    stored = ws.report_dir(req.id) / "report.json"
    if not stored.is_file():
        _fail(f"{req.id} has no report yet (status {req.status})")
    dest = out or Path(f"report-{req.id}")
    from tasks.reports import purge_note

    data = json.loads(stored.read_text())
    note = purge_note(ws, data["request"]["classes"] + data.get("earlier", []))
    path = render_again(stored, dest, **({"purged_note": note} if note else {}))
    typer.echo(f"{path} (and report.html, plots) written")


def purge(request_id: str, root: Root = Path(".")) -> None:
    """Remove a done request's images: new DVC-tracked dataset version, old copies deleted from
    the DVC cache and remote; the audit record keeps only their hashes."""
    ws = _ws(root)
    from flows.purge import purge_flow

    try:
        rec = purge_flow(str(ws.root), request_id)
    except KeyError as e:
        _fail(str(e.args[0]))
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
        _fail("give --cron EXPR or --interval SECONDS")
    from flows.process_requests import process_requests_flow

    # limit=1: one run process at a time; without it, runs that wait for the run lock pile up
    # (one Python+torch process per tick) until memory runs out (measured: SIGKILLed runs)
    process_requests_flow.serve(name=name, cron=cron, interval=interval, limit=1,
                                parameters={"root": str(ws.root)})


def demo(root: Root = Path(".forgetting/demo")) -> None:
    """Embedded defaults end to end: ingest the bundled digits, pretrain, queue and process
    the requests of params.yaml (by default two, the second 4-shot), print the results and
    where to look."""
    ws = _ws(root)
    init(root)
    if not ws.dataset.exists():
        ingest(root)
    pretrain(root)
    from tasks.ledger import RequestSpec
    from tasks.requests import ledger

    if not ledger(ws).all():
        from tasks.requests import add_request

        for i, r in enumerate(ws.config().requests, 1):
            spec = RequestSpec(**r.model_dump(), reason=f"demo request {i}", requester="demo")
            typer.echo(f"queued {add_request(ws, spec).id}: {', '.join(spec.classes)}")
    run(root)
    status(root)
    typer.echo(f"\nMLflow UI:  mlflow ui --backend-store-uri {ws.tracking_uri} --host 127.0.0.1"
               f"\nPrefect UI: PREFECT_HOME={ws.state / 'prefect'} prefect server start"
               f"\nDVC:        cd {ws.root} && dvc status")


def clear_errors(fn):
    """Known failures (bad config, request, data, checkpoint; an unreachable server) end the
    command with their message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from forgetting.config import ConfigError
        from forgetting.data import DataError
        from forgetting.model import CheckpointError
        from forgetting.train import RequestError
        from tasks.registry import ServiceUnavailable

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, CheckpointError, RequestError, ServiceUnavailable) as e:
            _fail(str(e))
        except RuntimeError as e:
            if "Failed to reach API" not in str(e):  # Prefect's message after its retries
                raise
            _fail(f"Prefect API unreachable: {e}; nothing was started, queued requests stay "
                  "pending")

    return wrapper


def register_commands(app: typer.Typer) -> None:
    for fn in (init, ingest, pretrain, run, status, report, purge, promote, rollback, serve,
               demo):
        app.command()(clear_errors(fn))
    request_app.command("add")(clear_errors(request_add))
    app.add_typer(request_app, name="request")
    from .repro import app as repro_app

    app.add_typer(repro_app, name="repro")


__all__ = ["register_commands"]
