# `make demo` and `make test` each create .venv if missing and install the project into it,
# with the exact versions of requirements.lock (pip-tools; `make lock` remakes it).
# Offline and telemetry settings live in tasks/environment.py, applied by the CLI and the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint lock bench bench-seq bench-methods tune figures gpu-check clean

# uv installs the locked set in 28 s on a fresh machine here, pip in 2 min 0 s (same versions);
# from uv's cache (a fresh clone on a machine that installed before) it links it in ~3 s.
# pip does it where uv cannot be installed. uv does not read pip's configuration: the machine's
# constraints and local wheel folder (PIP_FIND_LINKS) are passed on.
# Bytecode: compiling all 24k files of the environment at install (uv's --compile-bytecode,
# pip's default) took 28 s here (47 CPU-s), and a run imports about a third of them. So the
# install imports the pipeline once, and the runs below write the rest as they first import
# it, as a plain Python does. The export turns bytecode writing on for every recipe where
# PYTHONDONTWRITEBYTECODE is set, as on this machine: without bytecode every interpreter
# compiled torch, MLflow and Prefect from source again (importing the pipeline: 17 CPU-s, 8
# with bytecode). The project's own packages are compiled in full (an editable install).
# That import runs in a throwaway home: importing Prefect makes ~/.prefect, MLflow writes an
# installation id to ~/.config/mlflow, torch makes a compile-cache folder in /tmp
export PYTHONDONTWRITEBYTECODE :=
UV_VERSION := 0.13.9
PIP_CONSTRAINTS := $(wildcard /etc/xdg/pip/constraints.txt)
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	if $(PY) -m pip install --quiet uv==$(UV_VERSION); then \
		$(PY) -m uv pip install --quiet --python $(PY) -c requirements.lock \
			$(addprefix -c ,$(PIP_CONSTRAINTS)) $(addprefix --find-links ,$(PIP_FIND_LINKS)) \
			-e '.[dev,stack]'; \
	else \
		$(PY) -m pip install --quiet --upgrade pip && \
		$(PY) -m pip install --quiet -c requirements.lock -e '.[dev,stack]'; \
	fi
	$(PY) -m compileall -q forgetting tasks flows forgetting_cli forgetting_stack tests
	w=$$(mktemp -d) && HOME=$$w TMPDIR=$$w XDG_CONFIG_HOME=$$w XDG_CACHE_HOME=$$w \
		PREFECT_HOME=$$w/prefect $(PY) -c 'import flows.team, forgetting_cli.main'; \
		s=$$?; rm -rf $$w; exit $$s
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forget demo

# four processes on two cores (pytest-xdist), a module per unit: the two stack tests mostly wait
# on servers and outages, so two processes train beside them; the longest start first
# (tests/conftest.py). The suite is CPU-bound (97-99 % of both cores), so its time is its
# CPU-seconds over 2: benchmarks/suite_cpu.py says which tests and processes spend them
# (docs/benchmarks.md, "The test suite's CPU")
XDIST := --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PY) -m pytest -q -n 4 $(XDIST)

# the quick half in two processes: 1 min 36 s here (Intel Xeon, 2 cores; 2026-12-06)
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 $(XDIST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Resolve pyproject.toml's ranges to exact versions (run when a dependency changes), within
# the machine's pip constraints where it has them (here: the torch builds on its disk).
lock:
	rm -f requirements.lock
	$(PY) -m piptools compile --quiet --extra dev --extra stack --strip-extras --no-emit-index-url \
		--no-emit-find-links $(addprefix --constraint ,$(PIP_CONSTRAINTS)) \
		--output-file requirements.lock pyproject.toml

bench: $(STAMP)
	$(PY) benchmarks/quality.py --quick

bench-seq: $(STAMP)
	$(PY) benchmarks/sequence.py

# defaults are chosen on the validation splits of the digits and Fashion-MNIST (about 2 h on
# 2 cores, cached in .forgetting/bench-cache), then measured once on test
tune: $(STAMP)
	$(PY) benchmarks/tune.py --spaces embedding,4-shot

bench-methods: $(STAMP)
	$(PY) benchmarks/methods.py

# on a machine with a GPU: CUDA tests, ViT-B/16 throughput, one request end to end (< 8 min)
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

figures: $(STAMP)
	$(PY) benchmarks/readme_figures.py --run

clean:
	rm -rf .forgetting mlruns mlflow.db
