# Every target installs into .venv first if needed, so `make test` works from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow lint train bench clean

install: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,test]' -c .ci/constraints.txt
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(PY) -m ruff check src tests

# The MNIST recipe full length on a GPU; without one, the CPU recipe (about 25 minutes on two
# cores). Either ends by printing its newest grid and the commands that sample and score it.
train: install
	$(PY) -m diffusion.train $$($(PY) -c "import torch; print('experiment=mnist' if torch.cuda.is_available() else 'experiment=mnist_cpu')") $(ARGS)

# Ours against diffusers on this machine (CPU: a two-minute run; GPU: the MNIST recipe at
# batch 128, then the 35.7M DDPM CIFAR-10 network, then a 10,000-image FID). JSON and tables
# land in experiments/bench/; experiments/bench/README.md says how to read them.
bench: install
	$(PY) -m pip install -q -e '.[bench]' -c .ci/constraints.txt
	if $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
	  $(PY) -m diffusion.bench vs=diffusers data.batch_size=128 bench.warmup=3 bench.repeats=10 \
	    bench.sample_n=256 bench.sample_steps=50 $(ARGS) && \
	  $(PY) -m diffusion.bench vs=diffusers data=flowers102 data.image_size=32 data.center_crop=true \
	    model.base_channels=128 'model.channel_mult=[1,2,2,2]' 'model.attention_resolutions=[16]' \
	    data.batch_size=128 bench.sample_n=256 bench.sample_steps=50 $(ARGS) && \
	  $(PY) -m diffusion.bench experiment=mnist data.batch_size=128 bench.fid_n=10000 \
	    bench.fid_batch=2000 bench.fid_steps=50 $(ARGS); \
	else \
	  $(PY) -m diffusion.bench vs=diffusers $(ARGS); \
	fi

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
