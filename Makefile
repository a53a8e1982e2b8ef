# One command runs the app, one runs the tests; each sets up the virtual environment it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run test lint bench evaluate train-gpu clean

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

# The shipped weights: the four models trained side by side on one GPU (an H200), each for as
# many epochs as fit TIME_BUDGET seconds (models.train --time-budget); then `make evaluate`.
# Reads CIFAR-10 from DYNN_CIFAR10 (or DATA=...), writes assets/weights/, logs to checkpoints/.
TIME_BUDGET ?= 520
DATA ?= $(DYNN_CIFAR10)
GPU_RUN = $(PY) -m models.train --model $(1) --data $(DATA) --device cuda --time-budget $(TIME_BUDGET) --epochs 200

train-gpu: $(RUN_STAMP)
	mkdir -p checkpoints
	$(call GPU_RUN,early_exit) --loss exit_weight=0.5 >checkpoints/early_exit.log 2>&1 & a=$$!; \
	$(call GPU_RUN,block_skip) >checkpoints/block_skip.log 2>&1 & b=$$!; \
	$(call GPU_RUN,pixel_mask) >checkpoints/pixel_mask.log 2>&1 & c=$$!; \
	$(call GPU_RUN,vit_tokens) --batch-size 256 --optimizer adamw --lr 1.5e-3 --weight-decay 0.05 --warmup 0.1 \
		>checkpoints/vit_tokens.log 2>&1 & d=$$!; \
	failed=0; for p in $$a $$b $$c $$d; do wait $$p || failed=1; done; exit $$failed

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
