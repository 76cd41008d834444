"""Imported once by the tests' fork server (tests/forkserver.py): what `forget` commands load."""

import prefect.main  # noqa: F401

import flows.ingest  # noqa: F401
import flows.pretrain  # noqa: F401
import flows.purge  # noqa: F401
import forgetting_cli.main  # noqa: F401
import tasks.registry  # noqa: F401
from flows.process_requests import before_forking_runs  # noqa: F401 (called by the server)
