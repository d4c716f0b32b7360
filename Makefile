# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint train clean

install: $(STAMP)

# hnswlib compiles with -march=native unless HNSWLIB_NO_NATIVE=1; build it portable and
# uncached, so a wheel built on one CPU is never reused on another.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	HNSWLIB_NO_NATIVE=1 $(BIN)/pip install --quiet --no-cache-dir "hnswlib==0.8.0"
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

demo: install
	$(BIN)/lookserve -v demo

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow and not tf"

lint: install
	$(BIN)/ruff check .

train: install
	$(BIN)/lookserve -v train all --data runs/data --seed 0

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
