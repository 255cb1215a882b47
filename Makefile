# Two commands do all the set-up: `make test` and `make run`.
# A user with a GPU overrides the torch requirement, e.g. `make test TORCH_SPEC="torch>=2.2"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.floodlib-installed

.PHONY: test run benchmark install browser clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest

# The viewer's browser test drives Debian's Chromium. As root on Debian (as in CI) it is installed here;
# elsewhere that one test skips and says why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver for the browser test"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null \
	      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; } \
	      || echo "chromium could not be installed: the browser test will skip"; \
	  else \
	    echo "chromium and chromedriver are not installed (and this is not root on Debian): the browser test will skip"; \
	  fi; \
	fi

run: $(STAMP)
	$(PY) -m floodlib.pipeline params/smoke.yaml

benchmark: $(STAMP)
	$(PY) benchmarks/models.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/training.py
	@if [ -f outputs/smoke/C/summary.json ]; then $(PY) benchmarks/evaluation.py; \
	else echo "benchmarks/evaluation.py times stage D on a finished smoke run: run 'make run' first"; fi
	@if [ -f outputs/smoke/B/models/Arch_04_tuned/model.pth ]; then $(PY) benchmarks/predict.py; else echo "benchmarks/predict.py times the smoke run's tuned Arch_04 against the solver: run 'make run' first"; fi

clean:
	rm -rf $(VENV)
