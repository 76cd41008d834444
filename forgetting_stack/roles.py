"""What each role may do, in each service, and ``forget stack user add | list | remove``.

| role      | MLflow (experiment, model)     | S3 (the bucket)        | git   | Prefect | run lock |
|-----------|--------------------------------|------------------------|-------|---------|----------|
| reader    | READ                           | Read, List             | fetch | no      | no       |
| submitter | READ                           | Read, List             | fetch | yes     | no       |
| operator  | MANAGE (promote, purge, ...)   | Read, List, Write, Tag | push  | yes     | yes      |

Prefect's open-source server has one basic-auth string and no users: whoever holds it can
submit, and also cancel or delete flow runs. What still guards a submission is on the worker:
the request is validated again there (schema, classes, the ledger's history), queued exactly
once by flow-run id under the run lock, and processed by the stack's own identity; a reader
is simply not given the string. SeaweedFS scopes actions to a bucket, not to a prefix, so a
workspace's S3 objects are separated from another's by the MLflow permissions and the DVC
remote path, not by S3 itself.

Each user gets ``users/<name>.env`` (mode 0600): the exports of their role, their own MLflow
and git token and their own S3 key pair; nothing of the stack's own identity."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
from collections.abc import Iterator

from .login import mlflow_login
from .settings import BUCKET, StackError, env_lines, write_private
from .users import ROLES

RIGHTS = {
    "reader": {"mlflow": "READ", "s3": ("Read", "List"), "prefect": False, "lock": False},
    "submitter": {"mlflow": "READ", "s3": ("Read", "List"), "prefect": True, "lock": False},
    "operator": {"mlflow": "MANAGE", "s3": ("Read", "List", "Write", "Tagging"),
                 "prefect": True, "lock": True},
}
assert set(RIGHTS) == set(ROLES)


@contextlib.contextmanager
def _admin(stack) -> Iterator:
    """MLflow's auth client, as the stack's admin, over the stack's TLS."""
    from mlflow.server.auth.client import AuthServiceClient

    env = stack.client_env()
    with mlflow_login(env):
        yield AuthServiceClient(env["MLFLOW_TRACKING_URI"]), env


def _s3_identities(stack, change) -> None:
    """Edit SeaweedFS's identities file, then have the running gateway read it again."""
    path = stack.s3_data / "identities.json"
    doc = json.loads(path.read_text())
    change(doc["identities"])
    write_private(path, json.dumps(doc))
    pid = stack.pid("s3")
    if pid is not None:
        os.kill(pid, signal.SIGHUP)  # SeaweedFS reloads its static config on SIGHUP


def _revoke(name: str):
    """SeaweedFS's reload applies a changed identity but keeps one that left the file (until
    the gateway restarts): so the identity stays, disabled, with no rights and a secret nobody
    has, and ``up`` drops it (``s3.start``)."""
    def change(ids: list[dict]) -> None:
        for i in ids:
            if i["name"] == name:
                i.update(actions=[], disabled=True)
                for c in i.get("credentials", []):
                    c["secretKey"] = secrets.token_urlsafe(30)
    return change


def add(stack, name: str, role: str, workspace: str, model: str | None = None) -> str:
    """The user in git, MLflow and S3 with ``role``'s rights on ``workspace``; returns the path
    of their exports file."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if role not in RIGHTS:
        raise StackError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    model = model or f"{workspace}-vit"
    rights = RIGHTS[role]
    with _admin(stack) as (auth, env):
        client = MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name(workspace)
        if exp is None:
            raise StackError(f"workspace {workspace!r} has no MLflow experiment on this stack "
                             "yet: attach and pretrain it first")
        token = stack.users().add(name, role)  # refuses a name that exists
        try:
            auth.create_user(name, token)
            auth.grant_user_permission(name, "experiment", exp.experiment_id, rights["mlflow"])
            try:
                client.get_registered_model(model)
            except MlflowException:
                model = None  # none registered yet: nothing to grant
            if model:
                auth.grant_user_permission(name, "registered_model", model, rights["mlflow"])
        except Exception:
            stack.users().remove(name)
            raise
    key, secret = "FU" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)
    _s3_identities(stack, lambda ids: ids.__setitem__(slice(None), [
        i for i in ids if i["name"] != name] + [{  # (a disabled namesake removed earlier)
            "name": name, "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": [f"{a}:{BUCKET}" for a in rights["s3"]]}]))
    exports = {k: v for k, v in env.items()
               if not k.startswith("PREFECT_API_AUTH") and k != "FORGET_LOCK_URL"}
    exports.update(MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=token,
                   FORGET_GIT_USERNAME=name, FORGET_GIT_PASSWORD=token,
                   AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    if rights["prefect"]:
        exports["PREFECT_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
    if rights["lock"]:
        exports["FORGET_LOCK_URL"] = env["FORGET_LOCK_URL"]
    out = stack.dir / "users" / f"{name}.env"
    out.parent.mkdir(mode=0o700, exist_ok=True)
    write_private(out, env_lines(exports))
    return str(out)


def remove(stack, name: str) -> None:
    """The user out of git, MLflow and S3 (their exports file too)."""
    stack.users().remove(name)  # refuses an unknown name and the stack's own
    with _admin(stack) as (auth, _):
        with contextlib.suppress(Exception):  # gone already
            auth.delete_user(name)
    _s3_identities(stack, _revoke(name))
    (stack.dir / "users" / f"{name}.env").unlink(missing_ok=True)
