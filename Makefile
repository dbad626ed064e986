# The two commands of a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test lint unit blackbox install bench clean

serve: $(STAMP)
	$(VENV)/bin/offload serve --import-starter

test: $(STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check offload tests bench tools
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

blackbox: $(STAMP)
	$(PY) -m pytest -q tests/blackbox

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) tools/install.py $(PY) -e '.[starter,dev]'
	touch $(STAMP)

bench: $(STAMP)
	$(PY) bench/cpu_single_stream.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
