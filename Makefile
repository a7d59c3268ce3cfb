# Set-up and entry points. `make train` and `make test` are the whole set-up.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install train test benchmark clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned (the CPU build on machines like this one); torch-cluster has no wheel
# for this torch, so it is built from source against the installed torch.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install --no-build-isolation torch-cluster
	$(PIP) install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

train: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/mpnn-train experiment=quickstart $(ARGS)

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q tests $(ARGS)

benchmark: install
	$(PY) scripts/benchmark.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
