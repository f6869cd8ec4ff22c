# vsdloral: set-up, tests and demo. `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# test processes (pytest-xdist): much of the suite waits on subprocesses (vspipe, ffmpeg, Ray, exports), so two
# workers on two cores finish sooner than one; PYTEST_WORKERS=0 runs it in this process
PYTEST_WORKERS ?= 2

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/find-python
	@set -e; \
	if [ ! -x $(PY) ]; then \
	  PYBIN=$$(bash .ci/find-python); \
	  echo "using $$PYBIN" >&2; \
	  $$PYBIN -m venv $(VENV); \
	fi; \
	$(PY) -m pip install -q --upgrade pip >&2; \
	$(PY) -m pip install -q -e '.[test,train,eval,sources,cluster,mlrt,onnx]' >&2; \
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/vapoursynth config >&2; \
	touch $(STAMP)

test: setup
	bash .ci/system-deps
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: setup
	bash .ci/system-deps
	bash examples/demo.sh

clean:
	rm -rf $(VENV) out .pytest_cache
