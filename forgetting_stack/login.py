"""Acting as one of the stack's users with MLflow's own client."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

MLFLOW_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_SERVER_CERT_PATH")


@contextlib.contextmanager
def mlflow_login(env: Mapping[str, str]) -> Iterator[None]:
    """MLflow's client takes its login and CA only from the environment, not as arguments:
    ``env``'s (a ``client.env`` or a user's file), for a while, then what was there before."""
    old = {k: os.environ.get(k) for k in MLFLOW_LOGIN}
    os.environ.update({k: env[k] for k in MLFLOW_LOGIN})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
