# Two commands on a fresh Linux machine with python3: `make demo`, `make test`
# (and `make lab` for the notebooks).
# Everything goes into .venv; it is (re)installed only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lab notebooks clean

demo: $(STAMP)
	$(VENV)/bin/labkit demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/labkit bench

# JupyterLab at the tour notebook (Ctrl-C stops it). It opens a browser at the
# tour when it can; otherwise open the address it prints and then the tour.
# As root (sudo make lab: the notebooks then measure on veth) Jupyter wants --allow-root.
lab: $(STAMP)
	@echo "make lab: JupyterLab on this folder; the course starts at notebooks/00_tour.ipynb"
	$(VENV)/bin/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) --ServerApp.root_dir=. notebooks/00_tour.ipynb

# Re-run the notebooks and store what they measured (as root: on veth)
notebooks: $(STAMP)
	$(VENV)/bin/python scripts/execute_notebooks.py

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "make: '$(PYTHON) -m venv' failed: install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv) and run make again" >&2; \
	  exit 1; }

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
