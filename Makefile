# chatterd: common tasks. `make setup` once, then `make run` / `make test`.
VENV      ?= .venv
PY        := $(VENV)/bin/python
CHATTERD  := $(VENV)/bin/chatterd
CONFIG    ?= configs/default.yaml
CHECKPOINT ?= var/checkpoint
# One random-weight checkpoint per family, DIR/<family> (what the tests and benches use).
CHECKPOINTS ?= var/test-checkpoints
FAMILIES  ?= turbo original multilingual
PYTEST_ARGS ?=

.PHONY: setup checkpoint checkpoints run test test-fast lint bench gpu-wheels gpu-check gpu-check-dry

setup:                      ## system packages (as root on Debian), .venv, the package and dev tools
	scripts/setup

checkpoint: $(CHECKPOINT)/RANDOM_WEIGHTS.txt   ## a full-size random-weight checkpoint for trying things out

$(CHECKPOINT)/RANDOM_WEIGHTS.txt:
	$(CHATTERD) make-checkpoint --random $(CHECKPOINT)

checkpoints: $(FAMILIES:%=$(CHECKPOINTS)/%/RANDOM_WEIGHTS.txt)   ## a random-weight checkpoint per family (tests, benches)

$(CHECKPOINTS)/%/RANDOM_WEIGHTS.txt:
	$(CHATTERD) make-checkpoint --model $* --random $(CHECKPOINTS)/$*

var/baseline-venv/bin/python:   # the seed's method, for `bench stream`
	bench/setup-baseline var/baseline-venv

run:                        ## run the daemon in the foreground with $(CONFIG)
	$(CHATTERD) run -c $(CONFIG)

test:                       ## the whole test suite (real broker, real PortAudio, random-weight model)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast:                  ## only the tests that do not load the model
	$(PY) -m pytest -m "not model and not e2e" $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check daemon tts tests bench
	$(VENV)/bin/mypy

bench: checkpoints var/baseline-venv/bin/python   ## T3 step and streaming per family, one run each (bench/README.md)
	$(CHATTERD) bench --checkpoints $(CHECKPOINTS) t3
	$(CHATTERD) bench --checkpoints $(CHECKPOINTS) stream

gpu-wheels:                 ## fetch into .gpu/ what the GPU check installs on the offline GPU machine
	scripts/gpu-wheels

gpu-check:                  ## the one-shot GPU check, on a GPU machine (README "GPU check"); results in $$OUT/gpu-check
	PY=$(if $(wildcard $(PY)),$(PY),python3) bench/gpu-check.sh

gpu-check-dry:              ## its dry run on this CPU: tiny sizes, results in var/gpu-check-dry
	PYTHONPATH=$(CURDIR) $(PY) -m bench.gpu_check --dry-run --out var/gpu-check-dry
