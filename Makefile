# Set-up and the two entry points. `make quickstart` and `make test` each create the venv first,
# installing the locked set of versions in constraints-cpu.txt (`make lock` refreshes it on purpose).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := constraints-cpu.txt
TORCH := torch==2.13.0

.PHONY: venv quickstart test lock bench clean

$(BIN)/simgan: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) -e ".[test]"
	touch $(BIN)/simgan

venv: $(BIN)/simgan

quickstart: venv
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/simgan run -c configs/experiment/quickstart.yaml

test: venv
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -q

# Resolve pyproject's ranges afresh (only torch pinned, to the CPU build), check that every
# extra imports in that environment, then write the lock. Review its diff and run `make test`.
lock:
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q $(TORCH) -e ".[test]"
	.venv-lock/bin/python -m pytest -q -p no:cacheprovider tests/core/test_install.py -k "not lock_pins"
	{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/pip freeze --all --exclude-editable | sed 's/+cpu$$//' \
	  | grep -v '^setuptools==\|^wheel=='; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

bench: venv
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs mlruns mlflow.db .pytest_cache
