# Each target sets itself up on a fresh machine: a .venv in the repo root, the project installed into it.
PY := .venv/bin/python

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -e ".[train,onnx,coco,dev]"
	touch $@

.PHONY: demo test lint
demo: .venv/.installed  ## the main job on its embedded default
	$(PY) train.py

test: .venv/.installed  ## the test suite (CPU, a few minutes)
	$(PY) -m pytest -q --durations=15

lint: .venv/.installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
