# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint train clean

install: $(STAMP)

# hnswlib compiles with -march=native unless HNSWLIB_NO_NATIVE=1; build it portable and
# uncached, so a wheel built on one CPU is never reused on another.
# The web page's browser test drives Debian's chromium (headless); installed when we may.
$(STAMP): pyproject.toml
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)); } || \
	  echo "note: chromium not installed (not root or no apt-get): the browser test will be skipped"
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
