# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with CPU PyTorch and lookalike; `make test` adds the test extras and the
# Debian packages the tests use (Fashion-MNIST, Chromium for the browser test).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU build of torch; on this platform 2.13.0 is served from local disk (see docs/install.md).
TORCH  ?= torch==2.13.0

.PHONY: demo test test-all install install-test system-deps bench clean

demo: install
	$(VENV)/bin/lookalike demo

test: install-test system-deps
	$(PY) -m pytest -m "not slow" tests

test-all: install-test system-deps
	$(PY) -m pytest tests

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test]"
	touch $@

# Debian packages used by tests; skipped quietly where they are already present.
system-deps:
	@bash scripts/system-deps.sh

bench: install-test system-deps
	# imagededup is only compared against in benchmarks/dedup_bench.py; --no-deps keeps its
	# tensorflow/torchvision pins out (its hashing methods need only what lookalike already has).
	$(PIP) install --quiet --no-deps "imagededup==0.3.3.post2"
	LOOKALIKE_SCENE_PHOTOS=1 bash scripts/system-deps.sh
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) lookalike-data
