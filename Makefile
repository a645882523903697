# Two commands: `make run` (set up, build the demo bundle if missing, serve on :8000) and
# `make test` (set up, lint, run the test suite). Everything else is a helper of those two;
# `make test-fast` is the inner loop (lint and the tests that need no trained bundle, server,
# browser, Ray or torchrun).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# EXTRAS=gpu installs onnxruntime-gpu, faiss-gpu and CuPy instead of the CPU builds.
EXTRAS ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRAS)

# DATA=<dir in the XC text layout, fastText file, or a shop export's .toml> serves that dataset;
# PRODUCTS=<file> INTERACTIONS=<file> (CSV, JSON lines or Parquet; SHOP_ARGS="--id-column sku
# ..." maps their columns, README "Your own data") serve a shop's export; without either the
# generated demo catalog.
DATA   ?=
PRODUCTS ?=
INTERACTIONS ?=
SHOP_ARGS ?=
SOURCE := $(if $(PRODUCTS),$(PRODUCTS),$(DATA))
dir_name = $(notdir $(patsubst %/,%,$(dir $(abspath $(1)))))
NAME   ?= $(if $(PRODUCTS),$(call dir_name,$(PRODUCTS)),$(if $(filter %.toml,$(DATA)),$(call \
	dir_name,$(DATA)),$(if $(DATA),$(notdir $(patsubst %/xc,%,$(abspath $(DATA)))),demo)))
# The flags that name the data to every `python -m training` step.
DATA_FLAGS = $(if $(PRODUCTS),--products $(PRODUCTS) $(if $(INTERACTIONS),--interactions \
	$(INTERACTIONS)) $(SHOP_ARGS),--data $(if $(DATA),$(DATA),$(DEMO_DATA)))
BUNDLE ?= models/$(NAME)
HOST   ?= 127.0.0.1
PORT   ?= 8000
DEMO_DATA := data/demo
# Extra flags for `python -m training train` (e.g. TRAIN_ARGS="--epochs 4").
TRAIN_ARGS ?= $(if $(SOURCE),,--epochs 1)
# Flags for the MACH heads added to the bundle (MACH_ARGS=none builds ASTRA only).
MACH_ARGS ?= $(if $(SOURCE),,--epochs 20 --repetitions 8)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test test-fast lint format openapi bundle clean

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

# The demo catalog in both shapes: the XC text layout and a shop's export (products.csv,
# interactions.csv, test_interactions.csv, shopdata.toml).
$(DEMO_DATA)/shopdata.toml: | $(STAMP)
	$(PY) -m training demo --out $(DEMO_DATA)

$(BUNDLE)/manifest.json: | $(STAMP) $(if $(SOURCE),,$(DEMO_DATA)/shopdata.toml)
	$(PY) -m training train $(DATA_FLAGS) --out $(BUNDLE) $(TRAIN_ARGS)
	$(if $(filter none,$(MACH_ARGS)),,$(PY) -m training train --model mach \
	    $(DATA_FLAGS) --encoder-from $(BUNDLE) --out $(BUNDLE) $(MACH_ARGS))
	$(PY) -m training quantize --bundle $(BUNDLE) $(DATA_FLAGS)
	$(if $(findstring --train-split trn,$(TRAIN_ARGS)),@echo "no learned ranker: dev is inside \
	    the training data (--train-split trn)",$(PY) -m training ranker --bundle $(BUNDLE) \
	    $(DATA_FLAGS))

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
# downloads no browser), docker-compose to validate docker/compose.yaml, and strace to see
# that a new batch job's directory entries are fsynced.
TOOLS_STAMP := $(VENV)/.test-tools-stamp
$(TOOLS_STAMP): | $(STAMP)
	(command -v chromium && command -v docker-compose && command -v strace) >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq chromium docker-compose strace) \
	  || (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium docker-compose strace) \
	  || echo "chromium/docker-compose/strace could not be installed: their tests will be skipped"
	touch $@

# PostgreSQL from Debian for the tests of the fleet's shared store: the suite starts the installed
# server itself (bench/postgres.py, as the postgres user when run as root) on a free port, and
# XC_TESTS_NEED_POSTGRES=1 makes those tests fail, not skip, if it is missing.
PG_STAMP := $(VENV)/.postgres-stamp
$(PG_STAMP): | $(STAMP)
	(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl) >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq postgresql) \
	  || (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq postgresql)
	touch $@

test: lint $(TOOLS_STAMP) $(PG_STAMP)
	XC_TESTS_NEED_POSTGRES=1 $(PY) -m pytest -m "not bench_run"

# The tests that run a benchmark end to end (marked `bench_run`: the training-scale runs, the
# load generator against a fake server and against the demo bundle; about 80 s on 2 cores).
# Left out of `make test` to keep CI within its 20 minutes; `make bench` runs them first.
.PHONY: test-bench
test-bench: lint
	$(PY) -m pytest -m bench_run

# The containers end to end (docker/test-docker.sh): base images built locally from Debian
# packages (docker/local-images.sh; Docker Hub is not needed), dockerd started if none runs, the
# runtime and trainer images built, then `docker compose up` of the default profile (demo bundle,
# api on :8000) and of the fleet profile (PostgreSQL, three replicas, HAProxy on :8080) with a
# search through each, non-root checks and one replica killed. NOT part of `make test`: about
# 11 minutes on 2 cores with warm caches, longer on a fresh machine, and it needs root for
# dockerd and debootstrap; CI's budget is kept for the suite.
.PHONY: test-docker
test-docker:
	bash docker/test-docker.sh

# Under two minutes on 2 cores: no training, no live server, no browser (tests marked `slow`,
# and every test that needs a trained bundle, are left out; see tests/conftest.py).
test-fast: lint $(PG_STAMP)
	XC_TESTS_NEED_POSTGRES=1 $(PY) -m pytest -m "not slow and not bench_run"

# `make bench` reproduces every table of BENCHMARKS.md (about 2.5 h on 2 cores; keep the machine
# otherwise idle: most tables are timings). Its parts, run in this order:
#   test-bench     the tests that run a benchmark end to end (about 80 s): a broken
#                  harness fails here, not an hour in;
#   bench-quality  ours vs BM25, the untrained encoder and the XMC peers on Home Depot and
#                  cooking (absent bundles are trained first), ONNX parity, the int8 encoder,
#                  the learned ranker, product fields on the demo's export (bench.fields);
#   bench-serving  HTTP load (fp32, int8), offline batch scoring, catalog upserts, the in-process
#                  CPU baseline of the GPU benchmark, MACH decoding at 1M, 10M and 50M labels
#                  and a whole served MACH process at each (bench.mach_served, 9 GB of disk),
#                  20 SIGKILL cycles during batch jobs and upserts (bench.faults), three
#                  replicas on PostgreSQL (bench-fleet: propagation, failover), a
#                  single-query probe beside hostile clients (bench.hostile), and the serving
#                  peers side by side (bench-peers: this service, Infinity + FAISS, FastAPI +
#                  sentence-transformers + FAISS, tantivy BM25; about 10 min);
#   bench-scale    index choice by catalog size, K = 20K, 100K and 1M (about 40 min), checked
#                  against the Home Depot bundle's real vectors;
#   bench-train-scale  whole ASTRA training steps over Home Depot plus up to 10M distractor
#                  products (about 40 min, 12 GB of memory at its peak);
# then bench.report rewrites the generated tables from the results JSON. bench-serving needs the
# bundles and the int8 encoder that bench-quality leaves. K = 10M is its own target, added to the
# same results (about 30 min, 13 GB of memory), and so is the graph over 8-bit vectors at 100K,
# 1M, 2M and 5M with its curves fitted to 10M (bench-scale-sq8, about 2 h, 5M alone over 1 h),
# and the scan of 4-bit PQ codes from 100K to 10M (bench-scale-pq4, about 30 min, 12 GB).
# The peer libraries get their own venv: libpecos pins numpy<2, which .venv must not be given;
# its declared torch/transformers deps serve XR-Transformer only, hence --no-deps.
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-stamp
$(PEERS_STAMP): bench/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/pip install --quiet -r bench/requirements-peers.txt
	$(PEERS_VENV)/bin/pip install --quiet --no-deps libpecos==1.2.8
	touch $@

HOMEDEPOT := ../shared/data/homedepot/xc
COOKING   := ../shared/data/cooking/xc
SCALE_CALIBRATE := $(if $(wildcard models/homedepot/manifest.json),--calibrate models/homedepot)

.PHONY: bench bench-quality bench-serving bench-scale bench-10m bench-scale-sq8 bench-scale-pq4 \
	bench-train-scale bench-fleet bench-peers
bench:
	$(MAKE) test-bench
	$(MAKE) bench-quality
	$(MAKE) bench-serving
	$(MAKE) bench-scale
	$(MAKE) bench-train-scale
	$(PY) -m bench.report

# The Home Depot ranker also learns from the queries of half of train, scored by the same
# recipe fitted on the other half (`training ranker --stack-from`; about 20 min to build).
HD_HALF := models/homedepot-half-a
$(HD_HALF)/manifest.json: | $(STAMP)
	$(PY) -m training train --data $(HOMEDEPOT) --train-split train-a --out $(HD_HALF) --epochs 4
	$(PY) -m training distill --bundle $(HD_HALF) --data $(HOMEDEPOT)

# The Home Depot table is scored twice: first to build the bundles, then with the ranker that
# bench.ranker trains into them.
bench-quality: $(STAMP) $(PEERS_STAMP) $(DEMO_DATA)/shopdata.toml $(HD_HALF)/manifest.json
	$(PY) -m bench.quality --dataset homedepot --dataset cooking --build-missing
	$(PY) -m bench.parity --data $(HOMEDEPOT) --data $(COOKING)
	$(PY) -m bench.int8 --bundle models/homedepot --data $(HOMEDEPOT)
	$(PY) -m training distill --bundle models/homedepot --data $(HOMEDEPOT)
	$(PY) -m bench.ranker --bundle models/homedepot --data $(HOMEDEPOT) --stack-from $(HD_HALF)
	$(PY) -m training ranker --bundle models/homedepot-hybrid --data $(HOMEDEPOT) \
	    --stack-from $(HD_HALF)
	$(PY) -m bench.quality --dataset homedepot
	$(PY) -m bench.fields --data $(DEMO_DATA)/shopdata.toml

bench-serving: $(STAMP)
	$(PY) -m bench.load --bundle models/homedepot --data $(HOMEDEPOT) --name homedepot-fp32 \
	    --server-env XC_ENCODER_PRECISION=fp32 --server-env XC_CACHE_ENTRIES=0 \
	    --duration 15 --overload-duration 15 --requests 2000
	$(PY) -m bench.load --bundle models/homedepot --data $(HOMEDEPOT) --name homedepot-int8 \
	    --server-env XC_ENCODER_PRECISION=int8 --server-env XC_CACHE_ENTRIES=0 \
	    --duration 15 --overload-duration 15 --requests 2000
	$(PY) -m bench.hot_path --bundle models/homedepot --data $(HOMEDEPOT) --requests 3000 \
	    --variant default=. --variant student=.,XC_ENCODER_SIZE=student \
	    --variant full-fp32=.,XC_ENCODER_SIZE=full,XC_ENCODER_PRECISION=fp32 \
	    --variant full-int8=.,XC_ENCODER_SIZE=full
	$(PY) -m bench.load --bundle models/homedepot --data $(HOMEDEPOT) --split train \
	    --name homedepot-distinct-full --server-env XC_CACHE_ENTRIES=0 \
	    --server-env XC_ENCODER_SIZE=full --stream distinct \
	    --phases sequential,sequential_lean,throughput,throughput_lean --duration 15 --requests 2000
	$(PY) -m bench.load --bundle models/homedepot --data $(HOMEDEPOT) --split train \
	    --name homedepot-distinct --server-env XC_CACHE_ENTRIES=0 --stream distinct \
	    --phases sequential,sequential_lean,throughput,throughput_lean --duration 15 --requests 2000
	$(PY) -m bench.load --bundle models/homedepot --data $(HOMEDEPOT) --split train \
	    --name homedepot-zipf --stream zipf --zipf-exponent 1.0 \
	    --phases sequential,sequential_lean,throughput,throughput_lean --duration 15 --requests 2000
	$(PY) -m bench.batch --bundle models/homedepot --data $(HOMEDEPOT) --requests 100000 \
	    --paths cli,worker,ray --env XC_ENCODER_PRECISION=int8
	$(PY) -m bench.catalog --bundle models/homedepot --data $(HOMEDEPOT)
	$(PY) -m bench.catalog --bundle models/homedepot --data $(HOMEDEPOT) --precision int8 \
	    --out bench/results/catalog-int8.json
	$(PY) -m bench.gpu --bundle models/homedepot-hybrid --data $(HOMEDEPOT) --device cpu
	$(PY) -m bench.mach_decode --labels 1000000 10000000 50000000 --queries 100 \
	    --exact-queries 20 --top-buckets 2 5 10 20 50
	$(PY) -m bench.mach_heads
	$(PY) -m bench.mach_served --labels 1000000 10000000 50000000
	$(PY) -m bench.astra_optimizer
	$(PY) -m bench.faults --bundle models/homedepot --cycles 20
	$(MAKE) bench-fleet
	$(PY) -m bench.hostile --bundle models/homedepot
	$(MAKE) bench-peers

# Serving peers side by side, one after another on this machine, same catalog, queries and load
# generator (bench.peers_serving, about 10 min; the title embeddings of the two encoder peers
# are computed once, about 3 min, and cached in models/.cache): this service, Infinity with
# FAISS in the client, a FastAPI + sentence-transformers + FAISS app and a tantivy BM25 app.
# Infinity gets its own venv (it pins numpy<2 and sentence-transformers<4); tantivy is in the
# bench extra of .venv.
INFINITY_VENV  := .venv-infinity
INFINITY_STAMP := $(INFINITY_VENV)/.installed-stamp
$(INFINITY_STAMP): bench/requirements-infinity.txt
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --quiet --upgrade pip
	$(INFINITY_VENV)/bin/pip install --quiet torch==2.13.0
	$(INFINITY_VENV)/bin/pip install --quiet -r bench/requirements-infinity.txt
	touch $@

bench-peers: $(STAMP) $(INFINITY_STAMP)
	$(PY) -m bench.peers_serving --bundle models/homedepot --data $(HOMEDEPOT) \
	    --duration 15 --requests 2000

# Three replicas on one throwaway PostgreSQL (the installed server): catalog propagation and
# batch failover under SIGKILL (about 2 minutes).
bench-fleet: $(STAMP) $(PG_STAMP)
	$(PY) -m bench.fleet --bundle models/homedepot --changes 200 --kills 12

bench-scale: $(STAMP)
	$(PY) -m bench.scale --merge $(SCALE_CALIBRATE)

bench-10m: $(STAMP)
	$(PY) -m bench.scale --sizes 10000000 --merge
	$(PY) -m bench.report

bench-train-scale: $(STAMP)
	$(PY) -m bench.astra_train_scale --data $(HOMEDEPOT) --distractors 0 1000000 2000000 4000000 \
		10000000
	$(PY) -m bench.report

bench-scale-sq8: $(STAMP)
	$(PY) -m bench.scale --sizes 100000 1000000 2000000 5000000 --types flat hnsw_sq8 \
	    --mach-queries 0 --merge
	$(PY) -m bench.report

bench-scale-pq4: $(STAMP)
	$(PY) -m bench.scale --sizes 100000 1000000 2000000 5000000 10000000 --types pq4_scan \
	    --mach-queries 0 --merge
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) $(PEERS_VENV) $(INFINITY_VENV) $(DEMO_DATA) models/demo models/.checkpoints models/.cache
