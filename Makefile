# Two commands matter: `make train` and `make test`. Both (re)build .venv only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN := runs/tiny-moe-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install install-gpu train test test-all data clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
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

# GPU machine whose CUDA torch is already installed (system or conda python): install around it, never touching
# torch; MegaBlocks and its CUDA extensions are built against that torch (see ../shared/DATA.md).
GPU_PY ?= python3
install-gpu:
	$(GPU_PY) -m pip install --no-deps -e .
	$(GPU_PY) -m pip install 'transformers>=5,<6' tokenizers safetensors einops numpy tqdm matplotlib wandb tiktoken \
		pytest hypothesis
	TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-9.0}" $(GPU_PY) -m pip install --no-deps --no-build-isolation \
		stanford-stk==0.7.1 grouped_gemm==0.3.0 megablocks
