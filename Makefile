# Two commands on a fresh machine with Python 3.11 and make:
#   make demo [INPUT=path/to/image.tif] [OUT=demo-output]   set up, then segment with the default model
#   make test                                               set up, then run the tests
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= demo-output
SAMPLE  = $(OUT)/synthetic_sample.tif
INPUT  ?= $(SAMPLE)

.PHONY: env env-test demo test test-fast browser lint bench clean

# geoseg and what it runs on; the demo needs no more
env: $(VENV)/.installed

# and the tests' tools (pytest, playwright, ruff, the encoder weights the training tests load)
env-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "geoseg needs Python 3.11+; set PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@

demo: env
	@if [ "$(INPUT)" = "$(SAMPLE)" ]; then $(BIN)/python scripts/make_sample.py "$(SAMPLE)"; fi
	$(BIN)/geoseg segment "$(INPUT)" -o "$(OUT)" --vector --confidence --overwrite
	@echo "Outputs are in $(OUT)/ (mask and confidence GeoTIFFs, the mask's class names (.aux.xml), polygons GeoPackage, QGIS styles, preview PNG)."

test: env-test browser
	$(BIN)/python -m pytest -q --runslow

# Debian's chromium for the web page's browser test (needs root or sudo; skipped tests say so otherwise)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "could not install chromium: the browser test will be skipped"; }

test-fast: env-test
	$(BIN)/python -m pytest -q

lint: env-test
	$(BIN)/ruff check geoseg tests benchmarks scripts

bench: env
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
