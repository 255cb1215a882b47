# Two commands do all the set-up: `make test` and `make run`.
# A user with a GPU overrides the torch requirement, e.g. `make test TORCH_SPEC="torch>=2.2"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.floodlib-installed

.PHONY: test run benchmark install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

run: $(STAMP)
	$(PY) -m floodlib.pipeline params/smoke.yaml

benchmark: $(STAMP)
	$(PY) benchmarks/models.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/training.py

clean:
	rm -rf $(VENV)
