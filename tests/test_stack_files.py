"""``forget stack``'s files and its care with processes, without starting servers (the stack
itself runs end to end in test_stack.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from forgetting_stack import Stack, StackError, alive, read_env_file


def test_credentials_are_made_once_private_and_clients_get_urls_and_secrets(tmp_path):
    st = Stack(tmp_path / "stack")
    st.configure("127.0.0.1", 23000)
    creds = st.credentials()
    assert stat.S_IMODE(st.credentials_file.stat().st_mode) == 0o600
    assert st.credentials() == creds == read_env_file(st.credentials_file)  # made once
    assert len({creds["FORGET_STACK_PG_PASSWORD"], creds["AWS_SECRET_ACCESS_KEY"],
                creds["MLFLOW_TRACKING_PASSWORD"]}) == 3
    env = st.client_env()
    assert env["MLFLOW_TRACKING_URI"] == "https://127.0.0.1:23002"
    assert env["PREFECT_API_URL"] == "https://127.0.0.1:23001/api"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "https://127.0.0.1:23003"
    assert env["FORGET_GIT_URL"] == "https://127.0.0.1:23004"
    ca = str(st.tls_dir / "ca.pem")
    assert {env[k] for k in ("PREFECT_API_SSL_CERT_FILE", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                             "AWS_CA_BUNDLE", "GIT_SSL_CAINFO")} == {ca}
    # other hosts: the lock-only login, through the TLS front, verified
    assert env["FORGET_LOCK_URL"].startswith("postgresql://forgetting_lock:")
    assert env["FORGET_LOCK_URL"].endswith(
        f"@127.0.0.1:23000/forgetting?sslmode=verify-full&sslrootcert={ca}")
    assert creds["FORGET_STACK_PG_PASSWORD"] not in "".join(env.values())
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" not in env


def test_the_ca_is_made_once_and_the_server_certificate_follows_the_address(tmp_path):
    from cryptography import x509

    from forgetting_stack import tls

    a = tls.ensure(tmp_path / "tls", "10.0.0.5")
    ca = a["ca"].read_bytes()
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(a["key"].stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(a["cert"].read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in sans.get_values_for_type(x509.IPAddress)} >= {"10.0.0.5",
                                                                          "127.0.0.1"}
    first = a["cert"].read_bytes()
    assert tls.ensure(tmp_path / "tls", "10.0.0.5")["cert"].read_bytes() == first  # kept
    b = tls.ensure(tmp_path / "tls", "10.0.0.6")  # a new address: a new certificate, same CA
    assert b["cert"].read_bytes() != first and b["ca"].read_bytes() == ca
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))


def test_users_tokens_are_stored_hashed_and_roles_checked(tmp_path):
    from forgetting_stack.users import UsersFile

    users = UsersFile(tmp_path / "users.json")
    token = users.add("rita", "reader")
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    assert token not in users.path.read_text()
    assert users.check("rita", token) == "reader"
    assert users.check("rita", token + "x") is None and users.check("nobody", token) is None
    for bad in ("Rita", "../x", "forgetting", ""):
        with pytest.raises(StackError, match="user name"):
            users.add(bad, "reader")
    with pytest.raises(StackError, match="unknown role"):
        users.add("sam", "root")
    with pytest.raises(StackError, match="exists"):
        users.add("rita", "operator")
    before = users.path.read_text()
    users.set("rita", "reader", token)  # as `up` sets its own identity: unchanged, unwritten
    assert users.path.read_text() == before
    users.set("rita", "operator", token)
    assert users.check("rita", token) == "operator"
    users.remove("rita")
    assert users.check("rita", token) is None


def test_settings_stay_from_the_first_up_unless_changed_while_down(tmp_path):
    st = Stack(tmp_path / "stack")
    assert st.configure("127.0.0.1", 23000)["ports"]["mlflow"] == 23002
    assert st.configure(None, None)["port_base"] == 23000  # a later plain `up` keeps them
    assert st.configure(None, 24000)["ports"]["prefect"] == 24001  # nothing runs: allowed
    with pytest.raises(StackError, match="no stack at"):
        Stack(tmp_path / "elsewhere").settings()


def test_down_never_signals_a_process_up_did_not_start(tmp_path):
    """A pid file naming someone else's process (a recycled pid, an edited file) is ignored:
    ``down`` stops only processes whose command line or environment names this stack."""
    st = Stack(tmp_path / "stack")
    st.configure("127.0.0.1", 23000)
    other = subprocess.Popen(["sleep", "60"])
    try:
        st.run.mkdir(parents=True)
        for name in ("s3", "git", "prefect", "mlflow"):
            st.pidfile(name).write_text(f"{other.pid}\n")
        assert st.running() == {}
        assert all("not running" in line for line in st.down())
        assert alive(other.pid)
    finally:
        other.kill()
        other.wait()
    assert not alive(other.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as 'nobody' only under root")
def test_a_folder_postgres_cannot_reach_is_named_not_chmodded(tmp_path):
    closed = tmp_path / "private"
    closed.mkdir(mode=0o700)
    st = Stack(closed / "stack")
    from forgetting_stack.postgres import run_as

    with pytest.raises(StackError, match=f"chmod o\\+x {closed}"):
        run_as(st.dir)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700  # left as the user had it


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="the [stack] extra")
def test_postgres_data_survives_down_and_up():
    """The databases of Prefect, MLflow and the locks live in PostgreSQL's data folder: a
    row written before ``down`` is there after ``up`` (the whole stack restarts, with the
    registry intact, in test_stack.py's setting; here only PostgreSQL, in seconds)."""
    import psycopg2

    from forgetting_stack import free_port_base

    top = Path(tempfile.mkdtemp(prefix="forget-pg-test-", dir="/tmp"))
    top.chmod(0o711)  # PostgreSQL runs as 'nobody' under root: it must reach its folder
    st = Stack(top / "stack")
    try:
        assert st.up("127.0.0.1", free_port_base(), only=("postgres",)) == ["postgres: started"]
        assert st.up(only=("postgres",)) == ["postgres: already running"]
        with psycopg2.connect(st.pg_url("forgetting")) as con, con.cursor() as cur:
            cur.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before down')")
        pid = st.pid("postgres")
        assert st.down()[-1] == f"postgres: stopped (pid {pid})" and not alive(pid)
        st.up(only=("postgres",))
        with psycopg2.connect(st.pg_url("forgetting")) as con, con.cursor() as cur:
            cur.execute("SELECT v FROM kept")
            assert cur.fetchall() == [("before down",)]
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(st.pg_url("forgetting").replace(
                st.credentials()["FORGET_STACK_PG_PASSWORD"], "wrong"))
        # what other hosts use: the lock login through the TLS front; plain text refused,
        # and the lock login reaches no other database
        remote = st.pg_url("forgetting", remote=True)
        with psycopg2.connect(remote) as con:
            assert con.info.ssl_in_use
        with pytest.raises(psycopg2.OperationalError, match="accepts TLS connections only"):
            psycopg2.connect(remote.split("?")[0] + "?sslmode=disable")
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            psycopg2.connect(remote.replace("/forgetting?", "/mlflow?"))
    finally:
        st.down()
        shutil.rmtree(top, ignore_errors=True)


def test_attach_keeps_dvc_keys_local_even_ones_that_look_like_options(tmp_path):
    """A generated secret may start with "-" (1 in 64 for token_urlsafe): it must not be read
    as an option, and it goes to DVC's --local config only, never a committed file."""
    from tasks import shared
    from tasks.dvc import init_repo
    from tasks.git import attached
    from tasks.workspace import Workspace

    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(remote)],
                   check=True)
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir()
    init_repo(ws.root, ws.dvc_remote)
    shared.attach(ws, str(remote), "s3://bucket/dvc/forgetting", "http://127.0.0.1:9",
                "AKEXAMPLE", "-looks-like-an-option")
    local = (ws.root / ".dvc" / "config.local").read_text()
    assert "secret_access_key = -looks-like-an-option" in local
    committed = (ws.root / ".dvc" / "config").read_text()
    assert "endpointurl = http://127.0.0.1:9" in committed and "looks-like" not in committed
    assert attached(ws.root)
    log = subprocess.run(["git", "log", "--oneline", "main"], cwd=remote, capture_output=True,
                         text=True, check=True).stdout
    assert "DVC remote: the team stack's S3" in log  # pushed


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="the [stack] extra")
def test_a_failed_up_stops_what_it_started_and_names_a_taken_port():
    """An `up` that fails part way leaves nothing running (a second `up` would trip over
    it), and a port another process holds is named with that process."""
    import shutil
    import socket

    from forgetting_stack import free_port_base

    top = Path(tempfile.mkdtemp(prefix="forget-pg-test-", dir="/tmp"))
    top.chmod(0o711)  # PostgreSQL runs as 'nobody' under root: it must reach its folder
    st = Stack(top / "stack")
    base = free_port_base()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", base + 3))  # the S3 port
    squatter.listen()
    try:
        with pytest.raises(StackError, match=rf"s3 cannot start: port 127.0.0.1:{base + 3} is "
                                             rf"taken by pid {os.getpid()} "):
            st.up("127.0.0.1", base, only=("postgres", "s3"))
        assert st.running() == {}  # PostgreSQL, started first, was stopped again
    finally:
        squatter.close()
        st.down()
        shutil.rmtree(top)

