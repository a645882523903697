# Two commands: `make run` (set up, build the demo bundle if missing, serve on :8000) and
# `make test` (set up, lint, run the test suite). Everything else is a helper of those two.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

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
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,dev,bench]'
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

clean:
	rm -rf $(VENV) $(DEMO_DATA) models/demo models/.checkpoints models/.cache
