# cmcr-lite: one entry point. Every target sets up (or reuses) .venv first.
#   make demo   - run every notebook with papermill into outputs/notebooks/ (CPU defaults)
#   make test   - make demo, then pytest (package + tests/test_browser.py, which opens the executed
#                 notebooks in JupyterLab in headless Chromium) + nbval (notebooks)
PY := .venv/bin/python
# see cmcr_lite/__init__.py: spinning OpenMP threads starve each other on a small shared CPU
export OMP_WAIT_POLICY := passive
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

.PHONY: env browser data demo test test-package test-notebooks test-browser benchmark notebooks clean-data

env:
	bash tools/setup_env.sh

# Debian's chromium + chromium-driver: only tests/test_browser.py needs them
browser:
	bash tools/setup_browser.sh

data: env
	$(PY) -c "from cmcr_lite.paths import ensure_embedded_dataset as e; print('dataset:', e())"

demo: data
	mkdir -p outputs/notebooks
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
	  echo "== $$nb"; ../$(PY) -m papermill --cwd . -k python3 $$nb ../outputs/notebooks/$$nb || exit 1; \
	done

# demo first: tests/test_browser.py opens the notebooks it executes
test: demo browser
	$(PY) -m pytest tests -q
	$(PY) -m pytest -q --nbval-lax $(NOTEBOOKS)

test-package: data
	$(PY) -m pytest tests -q --ignore=tests/test_browser.py

test-notebooks: data
	$(PY) -m pytest -q --nbval-lax $(NOTEBOOKS)

test-browser: demo browser
	$(PY) -m pytest tests/test_browser.py -q

benchmark: data
	$(PY) benchmarks/projection.py

# rebuild the .ipynb files from their readable percent-format sources in notebooks/src/
notebooks:
	python3 tools/py2nb.py notebooks/src/*.py

clean-data:
	rm -rf data/nuscenes-synthetic
