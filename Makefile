# Two commands for a new user: `make demo` and `make test`. Both create .venv when
# needed and install the project into it. A CUDA user overrides one variable, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	@# Pin whatever torch was just installed, so no dependency can replace it.
	$(PY) -m pip freeze | grep -i '^torch==' > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev]"
	$(PY) tools/check_env.py $(VENV)/torch-constraint.txt
	@touch $(STAMP)

demo: install
	$(PY) jobs/generate.py

test: install
	$(PY) -m pytest -q -x --timeout=900 tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	@for b in benchmarks/bm_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
