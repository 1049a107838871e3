# Set-up and everyday tasks. Everything installs into .venv; nothing global.
#
#   make demo    install, train 2 minutes on the bundled corpus, print a sample
#   make test    install (with test tools) and run the test suite
#   make lint    install the pinned lint tools (the `lint` extra) and run ruff check, ruff format --check, mypy
#   make bench   install and print the performance figures of the README
#   make samples train 5 minutes on the bundled corpus and write samples/ (see samples/README.md)
#   make pretrained  train the bundled model again (charrnn/store/bundled/, see its README.md)
#
# torch is pinned to the 2.13.0 release first: on this kind of machine pip takes
# a CPU build of it from local disk. A bare `torch` requirement on a machine with
# no torch would pull a multi-GB CUDA build. Elsewhere, choose the build with
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_TIME ?= 2m

SAMPLES_RUN ?= runs/samples-model
PRETRAINED_RUN ?= runs/pretrained-shakespeare
PRETRAINED_STEPS ?= 2000

.PHONY: install demo test lint bench samples pretrained clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# mypy reads the installed packages' types (torch, numpy, ...), so the project is installed first.
$(VENV)/.lint-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[lint]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/charrnn train data/tinyshakespeare.txt --max-time $(DEMO_TIME)
	$(BIN)/charrnn sample --temperature 0.8 --length 800

test: install
	$(BIN)/python -m pytest -q

# Every checker runs even when one fails, so one pass shows every finding.
lint: $(VENV)/.lint-installed
	status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

bench: install
	$(BIN)/python benchmarks/performance.py

samples: install
	rm -rf $(SAMPLES_RUN)
	$(BIN)/charrnn train data/tinyshakespeare.txt --max-time 5m --out $(SAMPLES_RUN) 2> samples/training-log.txt
	for temperature in 0.5 0.8 1.0; do \
	  $(BIN)/charrnn sample $(SAMPLES_RUN) --temperature $$temperature --seed 1 --length 2000 \
	    > samples/temperature-$$temperature.txt; \
	done

# Steps, not time: the model does not depend on how loaded the machine is (seed 1337, the default).
pretrained: install
	rm -rf $(PRETRAINED_RUN)
	$(BIN)/charrnn train data/tinyshakespeare.txt --hidden-size 256 --max-steps $(PRETRAINED_STEPS) \
	  --threads 1 --out $(PRETRAINED_RUN)
	$(BIN)/python tools/build_pretrained.py $(PRETRAINED_RUN)/best.safetensors data/tinyshakespeare.txt \
	  charrnn/store/bundled/shakespeare.safetensors

clean:
	rm -rf $(VENV) runs .pytest_cache
