# Two-command quick start: `make train`, `make test`. Both create .venv and install the project first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines take the CPU build of torch (constraints-cpu.txt); machines with an NVIDIA GPU take the default build.
CONSTRAINTS := $(shell nvidia-smi -L >/dev/null 2>&1 || echo "-c constraints-cpu.txt")

.PHONY: install train test test-all bench clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(shell command -v $(PYTHON) || echo python3) -m venv $(VENV)
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) train.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -m "" $(ARGS)

bench: $(VENV)/.installed
	$(PY) bench/foundation.py

clean:
	rm -rf logs multirun outputs .pytest_cache
