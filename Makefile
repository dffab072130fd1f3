# The two commands of the README: `make book` and `make test`. Both work on a fresh machine:
# they create .venv, install the pinned packages and the vendored web assets, then do their job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HTML   := _build/html

# `book/` is a folder, so every target is phony or `make book` would say "up to date".
.PHONY: setup book test test-fast bench serve lab clean vendor clean-notebooks stress

setup: $(STAMP) vendor

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Mermaid and the widget manager are served from the built site itself, never from a CDN.
vendor: build/vendor/.stamp
build/vendor/.stamp: package.json package-lock.json scripts/vendor_assets.sh
	scripts/vendor_assets.sh build/vendor
	touch $@

# A failed run is never published: scripts/build_book.py refuses the site (and exits 1) when any
# notebook failed or any page shows a traceback, and adds the execution-status page.
book: setup
	$(BIN)/python scripts/build_book.py
	@echo
	@echo "Built. To read it: make serve   (then open http://127.0.0.1:8000/)"

serve:
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory $(HTML) 8000

# JupyterLab at the repository root, so chapters, labs and the links between them all work.
lab: setup
	$(BIN)/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=.

# Two workers, each taking whole files (a notebook's cells share its kernel), beside the book
# build the session starts in the background (tests/conftest.py).
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The quick loop while working on toylib: tests/ without the book build, the browser tests
# and the notebooks (nbval); `make test` runs everything.
test-fast: setup
	$(BIN)/python -m pytest -m "not book and not browser" tests/

# Verdicts and lab grades under a bursty load beside fresh builds (1.5-3 hours; not in `make test`).
stress: setup vendor
	$(BIN)/python scripts/stress.py --runs 5 --lab-runs 10

bench: setup
	$(BIN)/python scripts/bench.py

# Notebooks are stored with only the outputs nbval compares and no execution metadata.
clean-notebooks: setup
	$(BIN)/python scripts/notebooks.py clean

clean:
	rm -rf _build build .jupyter_cache
