# Everything a user needs:  make lab  |  make test
# Lecturers:  make slides | make present | make handouts | make test-browser (JupyterLab, RISE and the decks
#             in a real browser, offline, a few minutes)
# Both create .venv on first use (nothing is installed outside it) and are quick afterwards.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8888

# Keep caches and Jupyter state inside the checkout, not in $HOME.
export MPLCONFIGDIR      := $(CURDIR)/$(VENV)/mplconfig
export JUPYTER_CONFIG_DIR := $(CURDIR)/$(VENV)/etc/jupyter-user
export JUPYTER_RUNTIME_DIR := $(CURDIR)/$(VENV)/share/jupyter/runtime
export IPYTHONDIR        := $(CURDIR)/$(VENV)/ipython
export HYPOTHESIS_STORAGE_DIRECTORY := $(CURDIR)/$(VENV)/hypothesis
export PYTHONDONTWRITEBYTECODE := 1

NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
               -p no:cacheprovider -o addopts="" -q

.PHONY: setup lab workspace test test-unit-run test-kernels-run test-notebooks-run test-unit test-notebooks test-gpu test-browser slides present handouts sync lint execute clean

setup: $(STAMP)

# Re-installs only when the dependency files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# Build matplotlib's font cache now, so no notebook prints "building the font cache" on stderr.
	$(PY) -c "import matplotlib.pyplot"
	touch $(STAMP)

# JupyterLab's news popup off: the lab settings overrides of this venv (not a server flag).
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json

# Root (containers, this project's CI machines) needs jupyter's explicit consent.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

# A busy PORT stops here with a message (JupyterLab would quietly move to another port; port_retries=0 keeps
# it from doing so should the port be taken in between).
lab: setup
	@$(PY) -c "import socket, sys; port = int(sys.argv[1]); busy = socket.socket().connect_ex(('127.0.0.1', port)) == 0; \
	  sys.exit(busy and f'make lab: port {port} is busy (another JupyterLab?); stop what uses it, or pick another: make lab PORT={port + 1}')" $(PORT)
	@$(MAKE) --no-print-directory workspace
	@mkdir -p $(VENV)/share/jupyter/lab/settings && test -f $(LAB_OVERRIDES) || echo \
	  '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}, "jupyterlab-rise:plugin": {"theme": "white"}}' > $(LAB_OVERRIDES)
	$(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) --ServerApp.port_retries=0 $(ALLOW_ROOT) \
	    --ServerApp.root_dir=workspace --LabApp.default_url=/lab/tree/00_overview.ipynb

# Your own copy of the notebooks (git-ignored): created on first use; later runs bring in what changed upstream
# and never overwrite a notebook you edited without asking (run it in a terminal to be asked).
workspace: setup
	$(PY) -m moe_lib.teach.workspace

# tests/browser is the slow real-browser run of `make test-browser`, not part of `make test`.
# The unit tests (in two halves: the kernels, the rest) and nbval run side by side, so both cores stay busy until
# the end; each one's output is printed whole when it finishes, and any failing fails the target.
test: setup
	@$(MAKE) --no-print-directory -j3 --output-sync=target test-unit-run test-kernels-run test-notebooks-run

test-unit-run:
	$(PY) -m pytest -q tests --ignore=tests/browser --ignore=tests/kernels

test-kernels-run:
	$(PY) -m pytest -q tests/kernels

test-notebooks-run:
	$(PY) -m pytest $(NBVAL_FLAGS) notebooks

test-unit: setup
	$(PY) -m pytest -q tests --ignore=tests/browser

# One notebook:  make test-notebooks NB=notebooks/03_routing.ipynb
NB ?= notebooks
test-notebooks: setup
	$(PY) -m pytest $(NBVAL_FLAGS) $(NB)

# On a GPU machine (no venv needed there):  make test-gpu PY=python3
# Every unit test then runs on CUDA tensors, the `gpu`-marked grid included (add -n 8 via PYTEST_ARGS if
# pytest-xdist is there; the Mixtral-shape cases want a GPU to themselves).
PYTEST_ARGS ?=
test-gpu:
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/browser $(PYTEST_ARGS)

# JupyterLab in headless chromium (Debian's package; installed with apt-get if missing, which needs root):
# opens every notebook, runs all cells, checks errors, figures and widgets; screenshots in .browser-test/.
BROWSER_TIMEOUT ?= 1500
test-browser: setup
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; }
	MOE_LIB_BROWSER_TEST=1 timeout -k 30 $(BROWSER_TIMEOUT) $(PY) -m pytest -p no:cacheprovider -o addopts="" \
	    -q -rfEs --timeout=900 tests/browser

# Lecture decks that work offline: one reveal.js deck per notebook in build/slides/, reveal.js copied next to them
# from an installed package, math drawn as MathML, speaker notes on the S key. Open build/slides/index.html, or:
#   make present                  (the decks on http://127.0.0.1:8000/)
#   make slides SLIDES_NB=notebooks/03_routing.ipynb SLIDES_THEME=simple
SLIDES_NB ?= notebooks/*.ipynb
SLIDES_THEME ?= white
slides: setup
	$(PY) -m moe_lib.teach.slides decks --out build/slides --theme $(SLIDES_THEME) $(SLIDES_NB)

PRESENT_PORT ?= 8000
present: slides
	$(PY) -m moe_lib.teach.slides serve --dir build/slides --port $(PRESENT_PORT)

# Printable handouts (the whole notebook, notes as prose): build/handouts/NN_name.html, and .pdf printed by Debian's
# chromium (installed with apt-get if missing and root; without it, the HTML only: print it from any browser).
handouts: setup
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium (for the PDFs)"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1; } || true; }
	$(PY) -m moe_lib.teach.slides handouts --out build/handouts $(SLIDES_NB)

# After editing a notebook's .py pair (or the .ipynb), bring the other file of the pair up to date.
sync: setup
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb notebooks/solutions/*.ipynb

# Re-execute notebooks in place (after changing what they use); then commit the outputs.
execute: setup
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=300 $(NB)$(if $(filter notebooks,$(NB)),/*.ipynb,)

lint: setup
	$(VENV)/bin/ruff check moe_lib tests

clean:
	rm -rf $(VENV)
