# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-data test-fast lint train clean

install: $(STAMP)

# pip -qq: errors only (pip on this kind of machine warns about absent local index folders, and
# setuptools about editable installs in general); a failed install still stops make.
# hnswlib compiles with -march=native unless HNSWLIB_NO_NATIVE=1; build it portable and
# uncached, so a wheel built on one CPU is never reused on another.
# The web page's browser test drives Debian's chromium (headless); installed when we may.
$(STAMP): pyproject.toml
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)); } || \
	  echo "note: chromium not installed (not root or no apt-get): the browser test will be skipped"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip wheel setuptools
	HNSWLIB_NO_NATIVE=1 $(BIN)/pip install -qq --no-cache-dir "hnswlib==0.8.0"
	$(BIN)/pip install -qq -e '.[all]'
	@# perf_analyzer (bench --engine perf_analyzer): only the binary of the tritonclient 2.41.0
	@# manylinux wheel (the project needs tritonclient >= 2.51); it links libb64.so.0d (Debian) and
	@# libcudart.so.12 (the bench extra's nvidia-cuda-runtime-cu12, found by bench/perf_analyzer.py).
	@ldconfig -p 2>/dev/null | grep -q libb64.so.0d || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null)); } || \
	  echo "note: libb64-0d not installed (not root or no apt-get): perf_analyzer will not run"
	$(BIN)/pip download -qq --no-deps --only-binary=:all: -d $(VENV)/cache/perf_analyzer "tritonclient==2.41.0"
	$(BIN)/python -m lookserve.bench.perf_analyzer install $(VENV)/cache/perf_analyzer $(BIN)
	touch $(STAMP)

demo: install
	$(BIN)/lookserve -v demo

# Two workers, whole modules each (--dist loadfile): a module's servers (Triton, Milvus) still
# start once, and the suite's many waits (servers starting, deadlines) overlap on the 2 cores.
PYTEST_WORKERS ?= 2

test: install test-data
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

# Test data fetched once into ~/.cache/lookserve ($$LOOKSERVE_CACHE): MediaPipe's .tflite models
# from the mediapipe wheel (pip download, never installed; sha256-checked). A no-op when cached.
test-data: install
	$(BIN)/lookserve data pretrained
	@# Real photos of people for the pose gate (lookserve.data.photos): Debian's opencv-doc example
	@# data (installed when we may) and matplotlib's sample data, copied into the same cache.
	@[ -d /usr/share/doc/opencv-doc/examples/data ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q opencv-doc >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q opencv-doc >/dev/null)); } || \
	  echo "note: opencv-doc not installed (not root or no apt-get): the real-photo pose tests will be skipped"
	$(BIN)/python -m lookserve.data.photos

test-fast: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow and not tf"

lint: install
	$(BIN)/ruff check .

train: install
	$(BIN)/lookserve -v train all --data runs/data --seed 0

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
