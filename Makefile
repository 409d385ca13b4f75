# The two commands of the README:
#   make demo   - set up (venv) and watch two users chat over real SIP on the embedded loopback server
#   make test   - set up (venv + Debian packages kamailio, sip-tester, sipsak, tshark) and run every test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo chat serve test test-fast system-deps setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	./scripts/install-system-deps

demo: setup
	$(VENV)/bin/notebook-im demo

chat: setup
	$(VENV)/bin/notebook-im chat

serve: setup
	$(VENV)/bin/notebook-im serve --port 5060

test: setup system-deps
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -ra -m "not interop and not kernel" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
