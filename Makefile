# he-aero: `make help` lists the targets.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROMPT  ?= examples/prompt.txt

.DEFAULT_GOAL := help
.PHONY: help install demo test test-slow lint format train-default ablation bench-approx bench-kernels bench-he bench-gpt2 calibrate-default plan-default mutate

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install he-aero with its dev tools and Ray

demo: $(STAMP) ## the main job: private (encrypted) inference on the shipped default model
	$(BIN)/he-aero encrypt-infer $(PROMPT) --verify

test: $(STAMP) ## the fast test suite (a few minutes on 2 cores)
	$(BIN)/pytest

test-slow: $(STAMP) ## the slow end-to-end encrypted tests
	$(BIN)/pytest -m slow

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-approx: $(STAMP) ## max error vs depth: our plans vs (1+x/2^k)^(2^k) and constant-guess 1/x -> docs/approx.md
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m bench.approx --write docs/approx.md

bench-kernels: $(STAMP) ## kernel figures vs TenSEAL (matmul, polyval, attention layer) -> docs/kernels.{md,json}
	$(BIN)/python -m bench.kernels --out-dir docs

ABLATION_STEPS ?= 6000
ABLATION_LAYERS ?= 3
train-default: $(STAMP) ## train the shipped default model into models/checkpoints/default (~1 h on one core)
	OMP_NUM_THREADS=1 $(BIN)/he-aero train --variant softmax-only --attention sink --layers 3 --d-model 128 \
		--heads 4 --context 64 --entropy-reg --temperature --range-weight 1000.0 --steps 20000 --batch-size 32 --force \
		--lr 6e-3 --warmup 300 --eval-every 500 --seed 0 --threads 1 --out models/checkpoints/default

ablation: $(STAMP) ## AERO ablation, equal size/steps/seed -> docs/ablation.{md,json} (ABLATION_STEPS, _LAYERS)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.ablation --steps $(ABLATION_STEPS) --layers $(ABLATION_LAYERS) --runs runs/ablation --docs docs

SINK_ROWS = --only "sink baseline" --only "sink relu" --only "sink lnfree-relu" --only "sink softmax-only" \
	--only "default recipe" --only "sink softmax-only+ER pruned"
.PHONY: ablation-sink bench-aero
ablation-sink: $(STAMP) ## every variant with sink attention (the cost table's models) -> models/checkpoints/ablation-sink
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.ablation --steps $(ABLATION_STEPS) --layers $(ABLATION_LAYERS) \
		$(SINK_ROWS) --runs models/checkpoints/ablation-sink --docs runs/ablation-sink

bench-aero: $(STAMP) ## every variant encrypted: depth, refreshes, bytes, time, top-1 -> docs/he-costs.{md,json}
	$(BIN)/python -m bench.aero --runs models/checkpoints/ablation-sink --out docs

calibrate-default: $(STAMP) ## calibrate the shipped model on training text -> he_aero/data/default-calibration.json
	$(BIN)/he-aero calibrate --force --out he_aero/data/default-calibration.json

plan-default: $(STAMP) ## compile the shipped model's plan (ring, approximations, keys) -> he_aero/data/default-plan.json
	$(BIN)/he-aero plan --force --out he_aero/data/default-plan.json

ACCEPT_PROMPTS ?= 20
DECODE_PROMPTS ?= 8
BPB_WINDOWS ?= 8
RAY_WORKERS ?= 2
bench-he: $(STAMP) ## prefill 16/32/64 (one process, Ray), decode, accuracy, simulated workers -> docs/he-bench.md
	$(BIN)/python -m bench.infer speed --lengths 16 32 64 --decode 3 --ray-workers $(RAY_WORKERS) --out docs/he-bench.json
	$(BIN)/python -m bench.workers --out docs/he-workers.json --into docs/he-bench.json
	test ! -f docs/he-gpt2-speed.json || $(BIN)/python -m bench.gpt2 --speed docs/he-gpt2-speed.json \
		--simulated docs/he-workers.json --into docs/he-bench.json
	$(BIN)/python -m bench.infer accept --prompts $(ACCEPT_PROMPTS) --decode-prompts $(DECODE_PROMPTS) \
		--bpb-windows $(BPB_WINDOWS) --out docs/he-accept.json
	$(BIN)/python -m bench.infer report --speed docs/he-bench.json --accept docs/he-accept.json \
		--before docs/he-bench-before-flooding.json --workers docs/he-workers.json \
		--out docs/he-bench.md

GPT2_DIR ?= runs/gpt2-layer
GPT2_STEPS ?= 1000
GPT2_CACHE_MB ?= 4000
# The Ray run keeps no plaintexts (--ray-cache-mb 0): a prefill uses each once, and three processes each
# holding 4 GB of them next to the one-process run's memory (SEAL keeps what it freed) ran out of 24 GB.
bench-gpt2: $(STAMP) ## a GPT-2-size layer (d=768, 12 heads, T=128) trained here, run encrypted, 1 process and Ray (~1 h) -> docs/he-bench.json
	test -f $(GPT2_DIR)/model.safetensors || $(BIN)/he-aero train --layers 1 --d-model 768 --heads 12 \
		--context 128 --steps $(GPT2_STEPS) --batch-size 16 --warmup 100 --eval-every $(GPT2_STEPS) \
		--test-bytes 8192 --threads 2 --seed 0 --out $(GPT2_DIR)
	$(BIN)/he-aero calibrate --checkpoint $(GPT2_DIR) --samples 256 --out $(GPT2_DIR)/calibration.json --force
	$(BIN)/he-aero plan --checkpoint $(GPT2_DIR) --calibration $(GPT2_DIR)/calibration.json --ring 16384 \
		--out $(GPT2_DIR)/plan.json --force
	$(BIN)/python -m bench.infer speed --checkpoint $(GPT2_DIR) --plan $(GPT2_DIR)/plan.json --lengths 126 \
		--decode 2 --ray-workers $(RAY_WORKERS) --cache-mb $(GPT2_CACHE_MB) --ray-cache-mb 0 \
		--out docs/he-gpt2-speed.json
	$(BIN)/python -m bench.gpt2 --speed docs/he-gpt2-speed.json --simulated docs/he-workers.json \
		--into docs/he-bench.json
	$(BIN)/python -m bench.infer report --speed docs/he-bench.json --accept docs/he-accept.json \
		--before docs/he-bench-before-flooding.json --workers docs/he-workers.json --out docs/he-bench.md

mutate: $(STAMP) ## mutation testing of the critical modules -> docs/mutation.md (about 30 min; not in test/CI)
	$(BIN)/python tools/mutate.py

.PHONY: bench-logit-noise
bench-logit-noise: $(STAMP) ## the logits' deviation as the client sees it, and the cost of flooding it -> docs/logit-noise.json
	$(BIN)/python -m bench.logit_noise --flood 0 16 20 24 --out docs/logit-noise.json

.PHONY: bench-coverage
bench-coverage: $(STAMP) ## prompts inside the shipped plan's domains (test windows, degenerate families) -> docs/coverage.{json,md}
	$(BIN)/python -m bench.coverage --before docs/coverage-before.json --encrypted 3 --out docs/coverage.json

.PHONY: bench-serve
BENCH_CLIENTS ?= 4
BENCH_TOKENS ?= 2
bench-serve: $(STAMP) ## N clients x M tokens against one `he-aero serve` on loopback (BENCH_CLIENTS, BENCH_TOKENS)
	$(BIN)/python -m bench.serve --clients $(BENCH_CLIENTS) --tokens $(BENCH_TOKENS)
