"""A stand-in flow run for tests/test_flow_runs.py: says who and where it is, whether the
server's hook ran before it was forked and how many objects the collector leaves alone, then
exits with the code it is given (after its exit handler, as a fresh interpreter), or starts a
child and sleeps until killed."""

import atexit
import gc
import os
import subprocess
import sys
from pathlib import Path

hook = sys.modules.get("tests.flow_run_hook")
print(os.environ.get("PROBE_MSG"), os.getcwd(), os.getpid(), bool(hook and hook.PREPARED),
      gc.get_freeze_count(), flush=True)
if sys.argv[1] == "exit":
    atexit.register(print, "the run's exit handler", flush=True)
    sys.exit(int(sys.argv[2]))
child = subprocess.Popen(["sleep", "120"])
Path(sys.argv[2]).write_text(f"{os.getpid()} {child.pid}")
child.wait()
