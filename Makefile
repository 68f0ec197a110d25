# dualformer-mm: `make test` on a fresh machine creates .venv/, installs the pinned stack
# (requirements/stack.txt) and this package, then runs the tests.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.dualformer-setup
PYTEST_ARGS ?=

.PHONY: setup test flops clean-venv

setup: $(STAMP)

# Re-run the install whenever a pin, the package metadata or the script changes.
$(STAMP): requirements/stack.txt requirements/tests.txt setup.py tools/setup_env.sh
	PYTHON=$(PYTHON) bash tools/setup_env.sh
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

flops: $(STAMP)
	$(VENV)/bin/python tools/analysis/get_flops.py --paper

clean-venv:
	rm -rf $(VENV)
