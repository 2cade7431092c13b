# Each target sets itself up on a fresh machine: a .venv in the repo root, the project installed into it with the
# extras that target needs. One stamp file per set of extras, each adding to the one before, so `make demo` then
# `make test` (or the other way round) share one .venv and install only what is missing.
PY := .venv/bin/python
export NO_MKDOCS_2_WARNING := 1  # Material for MkDocs prints a notice about its successor on every build

.venv/.installed-train: pyproject.toml  ## what the main job needs: the project and its training extras
	python3 -m venv .venv
	$(PY) -m pip install -e ".[train]"
	touch $@

.venv/.installed-docs: .venv/.installed-train  ## + MkDocs (Material theme) for the documentation site
	$(PY) -m pip install -e ".[train,docs]"
	touch $@

.venv/.installed-test: .venv/.installed-docs  ## + every runtime, Ultralytics, the reference implementations, pytest, ruff
	$(PY) -m pip install -e ".[train,docs,onnx,coco,dev]"
	touch $@

web/node_modules/.installed: web/package-lock.json  ## onnxruntime-web for --format web and its browser tests (skip without npm)
	@if command -v npm >/dev/null; then npm ci --prefix web --no-audit --no-fund && touch $@; \
	else echo "npm not found: --format web and its tests need it (apt-get install npm)"; fi

# The annotation tools, each in an environment of its own (their pins clash with ours and with each other); the
# tests run the tools' own inference code there and skip, naming these lines, where they are missing.
.venv/tools/anylabeling/.installed: .venv/.installed-train
	python3 -m venv .venv/tools/anylabeling
	.venv/tools/anylabeling/bin/python -m pip install -q anylabeling==0.4.43
	touch $@

.venv/tools/x-anylabeling/.installed: .venv/.installed-train
	python3 -m venv .venv/tools/x-anylabeling
	.venv/tools/x-anylabeling/bin/python -m pip install -q 'x-anylabeling-cvhub[cpu]==4.2.1'
	touch $@

TOOLS := .venv/tools/anylabeling/.installed .venv/tools/x-anylabeling/.installed

.PHONY: demo test test-fast docs lint
demo: .venv/.installed-train  ## the main job on its embedded default
	$(PY) train.py

test: .venv/.installed-test web/node_modules/.installed $(TOOLS)  ## the documentation site, strictly (a broken link fails), then the test suite (CPU)
	$(PY) -m mkdocs build --strict --quiet
	$(PY) -m pytest -q --durations=15

test-fast: .venv/.installed-test  ## the developers' inner loop: the suite without what is marked slow (CI runs it all)
	$(PY) -m pytest -q -m "not slow"

docs: .venv/.installed-docs  ## the documentation site, into site/
	$(PY) -m mkdocs build --strict

lint: .venv/.installed-test
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
