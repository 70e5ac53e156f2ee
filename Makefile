# One command to set up and run the demo, one to set up and run the tests.
#   make demo    # venv + install, train the digits demo, serve the dashboard on 127.0.0.1:8501
#                # (another port: make demo PORT=8601)
#   make test    # venv + install (+ Chromium for the browser test), ruff, the docs build, the whole suite
#   make docs    # the docs as a site in site/ (MkDocs, Material theme; strict: a broken link fails)
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: setup demo test docs chromium

$(VENV)/.installed: pyproject.toml setup.py hooks/_fused.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a range would pull a multi-GB CUDA build on CPU machines
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing: sudo apt-get install -y chromium chromium-driver (the browser test will skip)"; fi; }

demo: setup
	$(VENV)/bin/diagnostics demo --port $(PORT)

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

test: setup chromium
	$(VENV)/bin/ruff check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"
	$(PY) -m pytest -q -p no:cacheprovider
