"""``python -m forgetting_cli``: the ``forget`` CLI, importing this checkout's code (dvc.yaml)."""

from .main import app

app(prog_name="forget")
