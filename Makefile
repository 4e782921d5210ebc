# chatterd: common tasks. `make setup` once, then `make run` / `make test`.
VENV      ?= .venv
PY        := $(VENV)/bin/python
CHATTERD  := $(VENV)/bin/chatterd
CONFIG    ?= configs/default.yaml
CHECKPOINT ?= var/checkpoint
PYTEST_ARGS ?=

.PHONY: setup checkpoint run test test-fast lint bench

setup:                      ## system packages (as root on Debian), .venv, the package and dev tools
	scripts/setup

checkpoint: $(CHECKPOINT)/RANDOM_WEIGHTS.txt   ## a full-size random-weight checkpoint for trying things out

$(CHECKPOINT)/RANDOM_WEIGHTS.txt:
	$(CHATTERD) make-checkpoint --random $(CHECKPOINT)

run:                        ## run the daemon in the foreground with $(CONFIG)
	$(CHATTERD) run -c $(CONFIG)

test:                       ## the whole test suite (real broker, real PortAudio, random-weight model)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast:                  ## only the tests that do not load the model
	$(PY) -m pytest -m "not model and not e2e" $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check daemon tts tests bench
	$(VENV)/bin/mypy

bench:                      ## the benchmark suite (see bench/README.md)
	$(CHATTERD) bench all
