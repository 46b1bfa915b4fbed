# Two commands for a fresh machine: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test install proto lint bench-synth clean

$(STAMP): pyproject.toml constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints/cpu.txt -e '.[all]'
	@touch $(STAMP)

install: $(STAMP)

## Run the main job on the embedded default.
demo: $(STAMP)
	$(VENV)/bin/slimspect demo

## Install, start what the tests need (the S3 store starts inside pytest), run the suite.
test: $(STAMP)
	@scripts/ensure-services.sh
	$(PY) -m pytest $(PYTEST_ARGS)

## Regenerate the wire stubs in slimspect/v1 from proto/.
proto: $(STAMP)
	$(PY) scripts/gen_proto.py

lint: $(STAMP)
	$(VENV)/bin/ruff check slimspect trainer edge_agent services tests benchmarks

bench-synth: $(STAMP)
	$(PY) benchmarks/bench_synth.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
