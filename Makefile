# The two entry points the README opens with: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STORE  ?= qdrant-edge://./agrame-data

.PHONY: setup demo test reliability bench clean

# Pin torch first (the CPU wheel); the demo gets the package alone, the tests its test
# extras too, both under the same pin.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0

$(VENV)/.package: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.test-extras: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e ".[test,milvus]"
	touch $(VENV)/.package $@

setup: $(VENV)/.test-extras

demo: $(VENV)/.package
	HF_HUB_OFFLINE=1 $(BIN)/agrame-vdb demo --store $(STORE)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The full reliability suite (>= 50 seeded fault runs, >= 10 kills, long load); CI runs a short seeded subset.
reliability: setup
	HF_HUB_OFFLINE=1 AGRAME_RELIABILITY=full $(BIN)/python -m pytest tests/reliability -q

bench: setup
	$(BIN)/python benchmarks/encoder.py

clean:
	rm -rf $(VENV) agrame-data .pytest_cache
