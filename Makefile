# Two commands: `make run` (set up, build the demo bundle if missing, serve on :8000) and
# `make test` (set up, lint, run the test suite). Everything else is a helper of those two.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# EXTRAS=gpu installs onnxruntime-gpu, faiss-gpu and CuPy instead of the CPU builds.
EXTRAS ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRAS)

# DATA=<dir in the XC text layout> serves that dataset; without it the generated demo catalog.
DATA   ?=
NAME   ?= $(if $(DATA),$(notdir $(patsubst %/xc,%,$(abspath $(DATA)))),demo)
BUNDLE ?= models/$(NAME)
HOST   ?= 127.0.0.1
PORT   ?= 8000
DEMO_DATA := data/demo
# Extra flags for `python -m training train` (e.g. TRAIN_ARGS="--epochs 4").
TRAIN_ARGS ?= $(if $(DATA),,--epochs 1)
# Flags for the MACH heads added to the bundle (MACH_ARGS=none builds ASTRA only).
MACH_ARGS ?= $(if $(DATA),,--epochs 20 --repetitions 8)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test lint format openapi bundle clean

setup: $(STAMP)

# torch is installed first and pinned: the CPU build of 2.13.0 is on the build machines, and
# anything that resolves torch afterwards (sentence-transformers) finds it satisfied.
# The CPU and GPU builds of ONNX Runtime and FAISS share module names: switching EXTRAS removes
# the other build first.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip uninstall --quiet --yes $(if $(filter gpu,$(EXTRAS)),onnxruntime faiss-cpu,onnxruntime-gpu faiss-gpu-cu12 cupy-cuda12x)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS),train,dev,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

$(DEMO_DATA)/lbl_X.txt: | $(STAMP)
	$(PY) -m training demo --out $(DEMO_DATA)

$(BUNDLE)/manifest.json: | $(STAMP) $(if $(DATA),,$(DEMO_DATA)/lbl_X.txt)
	$(PY) -m training train --data $(if $(DATA),$(DATA),$(DEMO_DATA)) --out $(BUNDLE) $(TRAIN_ARGS)
	$(if $(filter none,$(MACH_ARGS)),,$(PY) -m training train --model mach \
	    --data $(if $(DATA),$(DATA),$(DEMO_DATA)) --encoder-from $(BUNDLE) --out $(BUNDLE) $(MACH_ARGS))

bundle: $(BUNDLE)/manifest.json

run: $(STAMP) $(BUNDLE)/manifest.json
	$(PY) -m service --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

openapi: $(STAMP)
	$(PY) -m service.openapi

# Test tools from Debian: chromium for the search-page test (driven by Playwright, which
# downloads no browser) and docker-compose to validate docker/compose.yaml.
TOOLS_STAMP := $(VENV)/.test-tools-stamp
$(TOOLS_STAMP): | $(STAMP)
	(command -v chromium && command -v docker-compose) >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq chromium docker-compose) \
	  || (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium docker-compose) \
	  || echo "chromium/docker-compose could not be installed: their tests will be skipped"
	touch $@

test: lint $(TOOLS_STAMP)
	$(PY) -m pytest

# `make bench` reproduces the tables of BENCHMARKS.md: the quality benchmark on Home Depot and
# cooking (absent bundles are trained first), then the tables regenerated from its JSON. The
# peer libraries get their own venv: libpecos pins numpy<2, which .venv must not be given; its
# declared torch/transformers deps serve XR-Transformer only, hence --no-deps.
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-stamp
$(PEERS_STAMP): bench/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/pip install --quiet -r bench/requirements-peers.txt
	$(PEERS_VENV)/bin/pip install --quiet --no-deps libpecos==1.2.8
	touch $@

# The index scale benchmark (bench/scale.py) runs K = 20K, 100K and 1M here (about 25 min on
# 2 cores), checked against the Home Depot bundle's real vectors when it exists; K = 10M is
# its own target, added to the same results (about an hour on 2 cores, 14 GB of memory).
SCALE_CALIBRATE := $(if $(wildcard models/homedepot/manifest.json),--calibrate models/homedepot)

.PHONY: bench bench-10m
bench: $(STAMP) $(PEERS_STAMP)
	$(PY) -m bench.quality --dataset homedepot --dataset cooking --build-missing
	$(PY) -m bench.scale --merge $(SCALE_CALIBRATE)
	$(PY) -m bench.report

bench-10m: $(STAMP)
	$(PY) -m bench.scale --sizes 10000000 --merge
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) $(PEERS_VENV) $(DEMO_DATA) models/demo models/.checkpoints models/.cache
