# One command runs the app, one runs the tests; each sets up the virtual environment it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run test lint bench evaluate train-gpu finetune-gpu clean

$(RUN_STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

run: $(RUN_STAMP)
	$(PY) -m app

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

bench: $(DEV_STAMP)
	$(PY) -m tests.bench

evaluate: $(RUN_STAMP)
	for model in $$($(PY) -c "import models; print(*models.available())"); do \
		$(PY) -m models.evaluate --model $$model --write || exit 1; \
	done

# The shipped weights, in two GPU runs; `make evaluate` after each. Both read CIFAR-10 from
# DYNN_CIFAR10 (or DATA=...), write assets/weights/ and log to checkpoints/.
# train-gpu: the four models from scratch, side by side on one GPU (an H200), each for as many
# epochs as fit TIME_BUDGET seconds (models.train --time-budget).
TIME_BUDGET ?= 520
DATA ?= $(DYNN_CIFAR10)
# one model on the GPU: $(1) model, $(2) seconds of wall time, $(3) epochs at most
GPU_TRAIN = $(PY) -m models.train --model $(1) --data $(DATA) --device cuda --time-budget $(2) --epochs $(3)
GPU_RUN = $(call GPU_TRAIN,$(1),$(TIME_BUDGET),200)

train-gpu: $(RUN_STAMP)
	mkdir -p checkpoints
	$(call GPU_RUN,early_exit) --loss exit_weight=0.5 >checkpoints/early_exit.log 2>&1 & a=$$!; \
	$(call GPU_RUN,block_skip) >checkpoints/block_skip.log 2>&1 & b=$$!; \
	$(call GPU_RUN,pixel_mask) >checkpoints/pixel_mask.log 2>&1 & c=$$!; \
	$(call GPU_RUN,vit_tokens) --batch-size 256 --optimizer adamw --lr 1.5e-3 --weight-decay 0.05 --warmup 0.1 \
		>checkpoints/vit_tokens.log 2>&1 & d=$$!; \
	failed=0; for p in $$a $$b $$c $$d; do wait $$p || failed=1; done; exit $$failed

# finetune-gpu: each model then from its own train-gpu weights (--init), again side by side
# (an H100), for FINETUNE_BUDGET seconds with Cutout and a lower peak learning rate.
FINETUNE_BUDGET ?= 440
FINETUNE_RUN = $(call GPU_TRAIN,$(1),$(FINETUNE_BUDGET),300) --init assets/weights/$(1).safetensors \
	--init-card assets/weights/$(1).json

finetune-gpu: $(RUN_STAMP)
	mkdir -p checkpoints
	$(call FINETUNE_RUN,early_exit) --loss exit_weight=0.5 --cutout 16 --lr 0.1 --warmup 0.05 \
		>checkpoints/early_exit-finetune.log 2>&1 & a=$$!; \
	$(call FINETUNE_RUN,block_skip) --cutout 16 --lr 0.1 --warmup 0.05 >checkpoints/block_skip-finetune.log 2>&1 & b=$$!; \
	$(call FINETUNE_RUN,pixel_mask) --cutout 16 --lr 0.05 --warmup 0.05 >checkpoints/pixel_mask-finetune.log 2>&1 & c=$$!; \
	$(call FINETUNE_RUN,vit_tokens) --batch-size 512 --optimizer adamw --lr 1e-3 --weight-decay 0.05 --warmup 0.05 \
		>checkpoints/vit_tokens-finetune.log 2>&1 & d=$$!; \
	failed=0; for p in $$a $$b $$c $$d; do wait $$p || failed=1; done; exit $$failed

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
