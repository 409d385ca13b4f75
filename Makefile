# The two commands of the README:
#   make demo   - set up (venv) and watch two users chat over real SIP on the embedded loopback server
#   make test   - set up (venv + Debian packages kamailio, sip-tester, sipsak, tshark, chromium) and run every test
# and more:
#   make lab    - JupyterLab on 127.0.0.1:8888 with the first tutorial open (two chat panels)
#   make chat   - type as alice to an echo bot in the terminal
#   make docs   - the API reference (pdoc) in build/api/
#   make lint   - ruff: lint and the format check (make test runs it first)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo chat serve lab docs lint test test-fast system-deps setup clean

# setup.py compiles the parse path (sip/uri, headers, message, parser) with mypyc: rebuilt when they change
$(STAMP): pyproject.toml setup.py notebook_im/sip/uri.py notebook_im/sip/headers.py notebook_im/sip/message.py notebook_im/sip/parser.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# (pip -q hides setup.py's warning when the C build fell back to pure Python: say which core was installed)
	@cd /tmp && $(abspath $(PY)) -c "import notebook_im.sip as s; print('notebook_im SIP core:', 'compiled (mypyc)' if all(s.COMPILED.values()) else 'pure Python: the C build did not happen, pip install -v -e . says why')"
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

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port 8888 --no-browser notebooks/01-first-chat.ipynb

docs: setup
	$(PY) -m pdoc notebook_im -o build/api

lint: setup
	$(VENV)/bin/ruff check notebook_im tests bench support
	$(VENV)/bin/ruff format --check notebook_im tests bench support

# the whole suite on what the install built (compiled where a C compiler is at hand), then the sans-IO, unit and
# hostile-input tests again on the pure-Python modules (NOTEBOOK_IM_PURE=1): both must hold
EXPECT_COMPILED := $(shell command -v cc >/dev/null 2>&1 && echo 1 || echo 0)
test: setup system-deps lint
	NOTEBOOK_IM_EXPECT_COMPILED=$(EXPECT_COMPILED) $(PY) -m pytest -q -ra $(PYTEST_ARGS)
	NOTEBOOK_IM_PURE=1 $(PY) -m pytest -q -ra -m "not slow" tests/sansio tests/unit tests/hostile $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -ra -m "not interop and not kernel and not browser and not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
