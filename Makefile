# Everything a fresh machine needs: `make demo` (main job) and `make test` (test suite).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast clean-cache

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (SPEED needs Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools<81" wheel
	# torch first and pinned: pip then takes this machine's CPU build instead of a multi-GB CUDA one.
	$(BIN)/pip install --quiet torch==2.13.0
	# [simulation]: ray for `speed deploy simulate` and its test (adds ~5 s and 220 MB)
	$(BIN)/pip install --quiet -e ".[test,simulation]"
	touch $(STAMP)

setup: $(STAMP)
	@ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 && echo "installed Debian package dataset-fashion-mnist"; } || echo "note: Fashion-MNIST not installed (best effort; needs apt-get and root: apt-get update && apt-get install dataset-fashion-mnist); speed reproduce --dataset fashion-mnist --data-dir DIR also works"

demo: $(STAMP)
	$(BIN)/speed demo

# The linter (ruff, configured in pyproject.toml), pytest's status, and then its closing counts:
# a zero status with failures or no test is not a pass.
test: $(STAMP)
	@mkdir -p .artifacts
	$(BIN)/ruff check src tests benchmarks
	set -o pipefail; $(BIN)/python -m pytest -q 2>&1 | tee .artifacts/pytest.log
	@tail -n 3 .artifacts/pytest.log | grep -Eq '[0-9]+ passed' || { echo "error: pytest reported no passing test"; exit 1; }
	@! tail -n 3 .artifacts/pytest.log | grep -Eq '[0-9]+ (failed|errors?)\b' || { echo "error: pytest reported failures"; exit 1; }

test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

clean-cache:
	rm -rf .speed-cache
