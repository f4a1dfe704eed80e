# Two commands do everything on a fresh machine: `make run` and `make test`.
#   make run PORT=8002 HOST=0.0.0.0      serve elsewhere (default 127.0.0.1:8001)
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#                                        CPU-only torch (no CUDA libraries) from that index
# Every step says what it does; pip shows its own progress.
PYTHON ?= python3
PORT ?= 8001
HOST ?= 127.0.0.1
# Test processes (pytest-xdist): most tests wait on servers and child processes, so more than the
# cores keeps them busy; a module that shares one costly fixture runs in one (xdist_group).
TEST_WORKERS ?= 3
# An index with torch wheels for this machine (e.g. the PyTorch CPU index); empty = the default index.
TORCH_INDEX_URL ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install --progress-bar on

.PHONY: run test install lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@echo "==> [1/4] virtual environment in $(VENV) (Python: $(PYTHON))"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/4] upgrading pip"
	$(PIP) --upgrade pip
ifneq ($(strip $(TORCH_INDEX_URL)),)
	@echo "==> [3/4] torch and torchvision (pinned in constraints.txt) from $(TORCH_INDEX_URL)"
	$(PIP) --index-url $(TORCH_INDEX_URL) \
	    "torch==$$(sed -n 's/^torch==//p' constraints.txt)" \
	    "torchvision==$$(sed -n 's/^torchvision==//p' constraints.txt)"
else
	@echo "==> [3/4] torch comes from the default index with the rest (set TORCH_INDEX_URL for CPU-only wheels)"
endif
	@echo "==> [4/4] the project and its pinned dependencies (constraints.txt; torch is the largest, minutes)"
	$(PIP) -c constraints.txt -e '.[test]'
	touch $(STAMP)
	@echo "==> installed: $(BIN)/exposr-trainer"

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app.envfile .env
	$(BIN)/exposr-trainer serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) .pytest_cache
