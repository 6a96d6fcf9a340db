# Every target installs into .venv first if needed, so `make test` works from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow lint train clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(PY) -m ruff check src tests

# Full length on a GPU; without one, the CPU recipe (a 1.1M-parameter model, 2,000 steps).
train: install
	$(PY) -m diffusion.train $$($(PY) -c "import torch; print('' if torch.cuda.is_available() else 'experiment=mnist_cpu')") $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
