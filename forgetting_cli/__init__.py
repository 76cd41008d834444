"""The ``forget`` command line. Offline and telemetry-free settings are applied on import."""

import os

for _k, _v in {
    "DO_NOT_TRACK": "true",  # MLflow honours it only when exactly "true"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_k, _v)
