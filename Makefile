# Two commands matter: `make train` and `make test`. Both (re)build .venv only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN := runs/tiny-moe-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install install-gpu gpu-prep gpu-check train test test-all data clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test,wandb]'
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	$(PY) -m train.data --corpus default --tokenizer bpe-8k

# Trains the tiny MoE (MuonH + SqrtGate) on the shipped real-text corpus, then plots its monitors.
train: $(STAMP)
	$(PY) -m train --config configs/tiny-moe.toml --out $(RUN)
	$(PY) -m train.plot $(RUN) --out $(RUN)/plots

test: $(STAMP)
	$(PY) -m pytest -q

# Everything, including the checks marked slow (GPU ones still skip without CUDA).
test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

clean-venv:
	rm -rf $(VENV)

# GPU (README "GPU"). Here, with network: copy the MegaBlocks kit and prepare the token cache the GPU presets read into
# the git-ignored .gpu/ and .gpu-data/ that travel with the working tree, then check the prepared GPU run on CPU.
GPU_KIT ?= ../shared/gpu
# SUITE=speedup: issue 17's optimizer comparison (its token cache, the 'large' corpus, goes to .gpu-large/).
SUITE ?= checks
gpu-prep: $(STAMP)
	$(PY) benchmarks/gpu/orchestrate.py --suite $(SUITE) --prepare $(GPU_KIT) data

gpu-check: $(STAMP)
	GPU_PY=$(PY) bash benchmarks/gpu/run.sh --suite $(SUITE) --dry-run

# On the GPU machine (no network; CUDA torch preinstalled, e.g. /opt/torch/.venv): build stanford-stk, grouped_gemm
# and MegaBlocks offline from the kit in .gpu/ against that torch (never touching it), install this project around
# it without dependencies, and show what works. wandb is optional (runs log to metrics.jsonl without it).
GPU_PY ?= /opt/torch/.venv/bin/python
install-gpu:
	bash .gpu/build_megablocks_gpu.sh $(GPU_PY)
	$(GPU_PY) -m pip install --no-index --no-deps --no-build-isolation -e .
	$(GPU_PY) -m train.doctor --cache-dir .gpu-data
