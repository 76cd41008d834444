"""Shared fixtures: a tiny ViT pretrained once per session on the bundled digits.

Hermetic settings are applied before Prefect / MLflow / DVC can be imported by any test: the
project's offline defaults (``tasks.environment``) and a temporary Prefect home.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="forgetting-tests-"))
if not os.environ.get("PYTEST_XDIST_WORKER"):
    # what every process of the run can share (the tiny base model): made by the process that
    # starts the run, before pytest-xdist starts its workers (they inherit the variable)
    os.environ["FORGETTING_TESTS_SHARED"] = str(_SESSION_TMP / "shared")
    os.environ["FORGETTING_TESTS_MAIN_PID"] = str(os.getpid())  # the shared servers end with it
    # what libraries leave in the temporary folder and the home folder goes with the run,
    # not into /tmp and ~ (measured before: Prefect's runner storage and temporary-server
    # folders, torch's compile cache in /tmp; matplotlib's font cache in ~/.cache, MLflow's
    # installation id in ~/.config): every process of the run and every process it starts
    # inherits these; the stack tests' folders stay under /tmp on purpose (PostgreSQL runs as
    # 'nobody' there, and needs world-traversable parents), and SeaweedFS's sockets are /tmp's
    # whatever TMPDIR says (the stack removes them at stop)
    _OWN = {"TMPDIR": "tmp", "XDG_CONFIG_HOME": "config", "XDG_CACHE_HOME": "cache",
            "XDG_DATA_HOME": "data", "MPLCONFIGDIR": "matplotlib",
            "TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton"}
    for _var, _name in _OWN.items():
        (_SESSION_TMP / _name).mkdir()
        os.environ[_var] = str(_SESSION_TMP / _name)
    tempfile.tempdir = None  # read TMPDIR again
_SHARED = Path(os.environ.get("FORGETTING_TESTS_SHARED", _SESSION_TMP / "shared"))
os.environ.update(
    PREFECT_HOME=str(_SESSION_TMP / "prefect"),
    DVC_SITE_CACHE_DIR=str(_SESSION_TMP / "dvc-site"),
    TQDM_DISABLE="1",
    MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",  # a server a test stops must not stall for minutes
    # one MLflow process per team stack the tests start, not two: a test sends one request
    # at a time (forgetting_stack/mlflow_server.py)
    FORGET_STACK_MLFLOW_WORKERS="1",
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in several processes on a 2-core machine: one torch thread
    # each (set before torch is imported, inherited by every process a test starts), or they
    # slow each other down several times over (docs/operations.md, "threads")
    os.environ.update(FORGET_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
from tasks import environment  # noqa: E402

environment.apply()

import pytest  # noqa: E402
import torch  # noqa: E402

from forgetting.config import Config  # noqa: E402

TINY = {
    "model": {"embed_dim": 64, "depth": 4, "num_heads": 4, "image_size": 16, "patch_size": 4},
    "pretrain": {"epochs": 25, "batch_size": 64, "lr": 3e-3},
    "forget": {"epochs": 5},
}
# the smallest model that still shows the behaviour, for tests about the pipeline's mechanics
MICRO = {
    "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 16, "patch_size": 4},
    "pretrain": {"epochs": 4, "batch_size": 64, "lr": 3e-3},
    "forget": {"epochs": 2, "min_steps_per_epoch": 4},
    "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0, "max_class_drop": 1.0, "evidence": []},
    "evidence": {"retrain_baseline": False, "membership_inference": False, "attacks": []},
}


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


def pytest_sessionfinish(session) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the process that began the run: last out
        _stop_shared_prefect()
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)  # it made it; nothing else is in it


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    return Config.model_validate(TINY)


@pytest.fixture(scope="session")
def digits(session_tmp):
    from forgetting.data import import_sklearn_digits
    from forgetting.datasets import splits

    path = session_tmp / "digits.parquet"
    info = import_sklearn_digits(path, 16)
    return {"path": path, "info": info, **splits(path, Config.model_validate(TINY).model)}


@pytest.fixture(scope="session")
def base_model(digits, tiny_cfg):
    """(model, checkpoint path) of a tiny ViT pretrained on digits (~96 % val accuracy):
    trained once per run, by the first process to need it (the others wait for it, then load
    the same bytes)."""
    from filelock import FileLock

    from forgetting.model import load_checkpoint, save_checkpoint
    from forgetting.pretrain import pretrain
    from forgetting.runtime import setup_runtime

    dev = setup_runtime(tiny_cfg)  # (in every process: its threads and determinism)
    path = _SHARED / "base.safetensors"
    _SHARED.mkdir(parents=True, exist_ok=True)
    with FileLock(_SHARED / "base.lock"):
        if not path.exists():
            res = pretrain(tiny_cfg.model, 10, digits["train"], digits["val"],
                           tiny_cfg.pretrain, dev, progress=False)
            save_checkpoint(res.model, path, digits["info"].class_names)  # written atomically
    return load_checkpoint(path)[0], path


CPU = torch.device("cpu")

# `make test` runs in four processes (pytest-xdist, --dist loadfile --no-loadscope-reorder;
# not loadgroup: xdist 3.8 writes its group into ``item._nodeid``, which pytest 9 no longer reads).
# Each module is one unit, so a module's fixtures (trained models, a served workspace) are built
# once, not once per process. Units start in this order: the two stack tests (mostly waiting on
# servers and outages) each in its own process, the two modules that train the most in the
# other two; xdist then queues one more unit behind each at once, so two quick modules go behind
# the stack tests; the rest fills in as processes free up
LONGEST_FIRST = ("test_stack_faults.py", "test_stack.py::", "test_evidence.py", "test_pipeline.py",
                 "test_gates.py", "test_losses.py", "test_crash.py", "test_repro.py",
                 "test_gpu_check.py", "test_never_seen.py", "test_partition.py",
                 "test_parallel_evidence.py",
                 "test_timm_import.py", "test_cli.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        return next((i for i, name in enumerate(LONGEST_FIRST) if name in item.nodeid),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One Prefect server for the whole run, shared by pytest-xdist's processes: a real server
    process on 127.0.0.1 with its own SQLite database, started as Prefect's test harness starts
    one, by the first process to need it; the process that began the run stops it
    (``pytest_sessionfinish``). One per process cost each ~10 CPU-s to start and 1 a minute
    idle, on a machine the suite keeps busy (benchmarks/suite_cpu.py)."""
    import prefect.context
    from filelock import FileLock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _SHARED.mkdir(parents=True, exist_ok=True)
    url_file = _SHARED / "prefect-api"
    with FileLock(_SHARED / "prefect.lock"):
        if not url_file.exists():
            _start_shared_prefect(url_file)
    with temporary_settings({PREFECT_API_URL: url_file.read_text()}):
        # also as the process-wide settings, as prefect_test_harness does: Prefect's threads
        # started before this (log and event workers) read those, and without an API URL
        # they would start a temporary server of their own
        with prefect.context._temporary_global_settings_context(
                prefect.context.get_settings_context()):
            yield url_file.read_text()


def _start_shared_prefect(url_file: Path) -> None:
    """The server process (in its own session: it outlives the process that starts it, until
    ``_stop_shared_prefect``), as Prefect's harness runs it. Not the harness's own
    ``SubprocessASGIServer``: that one stops when the process that made it exits, and here that
    is whichever xdist process came first, not the last to finish."""
    import subprocess
    import sys

    from .servers import free_port, wait_for

    port, log = free_port(), _SHARED / "prefect-server.log"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{_SHARED}/prefect.db"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
             "--lifespan", "on"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (_SHARED / "prefect-server.pid").write_text(str(proc.pid))
    wait_for(f"http://127.0.0.1:{port}/api/health", 120, proc, log)
    url_file.write_text(f"http://127.0.0.1:{port}/api")


def _stop_shared_prefect() -> None:
    """The shared server's process group, where this run started one (psutil waits on it
    whether or not this process is its parent)."""
    import signal

    import psutil

    pid_file = _SHARED / "prefect-server.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        server = psutil.Process(pid)
        os.killpg(pid, signal.SIGTERM)
        try:
            server.wait(10)
        except psutil.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            server.wait(10)


@pytest.fixture(scope="session")
def cli_env(prefect_api) -> dict:
    """The environment of ``forget`` processes: this session's offline settings and its
    Prefect server (so no run pays for a temporary server's start-up). Starts the fork server
    they come from (tests/forkserver.py)."""
    from . import forkserver

    forkserver.start(prefect_api, _SHARED, _SESSION_TMP,
                     int(os.environ["FORGETTING_TESTS_MAIN_PID"]))
    return {**os.environ, "PREFECT_API_URL": prefect_api}


def write_params(root: Path, params: dict) -> None:
    """Every key spelled out (DVC needs each tracked params section present)."""
    from forgetting.config import dump_config

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(dump_config(Config.model_validate(params)))
