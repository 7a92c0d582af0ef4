# Two commands for a new user: `make train` (default demo job) and `make test` (the whole suite);
# `make test-fast` is the unit-level subset for the edit-test loop.
# Both create .venv on first use and install the project with its test extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On the project's CPU machines these come from local disk; on a GPU cluster keep your own torch.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup train test test-fast docs bench clean

$(BIN)/pipeline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/pipeline

train: setup
	$(BIN)/pipeline train $(ARGS)

# Tests run in TEST_WORKERS processes (pytest-xdist; 1 = serial). Most tests wait on a subprocess
# that imports torch on one thread, so two workers keep both cores busy (docs/benchmarks.md).
# --dist loadscope keeps each test module on one worker: module fixtures (the local Slurm cluster,
# the GPU check's dry run) are set up once. --no-loadscope-reorder keeps the order tests/conftest.py
# gives: the heaviest modules first, so the two workers finish together.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 1,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test: setup
	$(BIN)/python -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

# The edit-test loop: unit-level tests only, no subprocess training (< 3 min on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The manual (docs/, mkdocs.yml) as a site in site/, in strict mode: a broken link or anchor, or a
# page left out of the navigation, fails the build (tests/test_docs.py runs the same build).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs data/demo .pytest_cache site
