# Set-up and the two entry points. `make quickstart` and `make test` each create the venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv quickstart test test-all bench clean

$(BIN)/simgan: pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[test]"
	touch $(BIN)/simgan

venv: $(BIN)/simgan

quickstart: venv
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/simgan run -c configs/experiment/quickstart.yaml

test: venv
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs mlruns mlflow.db .pytest_cache
