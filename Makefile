# Two commands set everything up on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools browser demo playground test chaos lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

# Azurite (the Azure Blob emulator) for tests/cloud, project-local; 3.36+ needs Node >= 21.
AZURITE := .tools/node_modules/.bin/azurite-blob
$(AZURITE):
	npm install --prefix .tools --no-audit --no-fund --silent azurite@3.35
tools: $(AZURITE)

# Chromium for the Playground's browser tests (tests/api/test_playground.py): Debian's package,
# installed when missing and possible; otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1) || \
	  echo "chromium could not be installed: the Playground browser tests will be skipped"

demo: install
	$(BIN)/python -m devtools.demo

# Redis, a worker and the API on embedded defaults; prints the Playground's URL.
playground: install
	$(BIN)/python -m devtools.playground

# Two processes, a test file each at a time: the suite mostly waits on the servers and worker
# processes it starts (measured on 2 cores: 11 min in one process, 6 min in two). Each has its own Redis.
test: install tools browser
	$(BIN)/python -m pytest -n 2 --dist loadfile

# Faults injected while jobs run (tests/chaos): prints the table, writes var/chaos.md.
chaos: install tools
	$(BIN)/python -m pytest -m chaos tests/chaos -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contract worker producer devtools api benchmarks

# Every figure of docs/pools.md in one run (~5 min; IMAGEGEN_BENCH_QUICK=1: ~3 min).
$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench]'
	touch $@

bench: install tools $(VENV)/.bench
	$(BIN)/python -m benchmarks.figures

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
