# The two entry points of the README. Both set up .venv on first use (pip, CPU build of torch pinned by
# constraints.txt), so they work on a fresh machine with nothing but Python >= 3.11.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
CORES  ?= all

.PHONY: demo test clean-venv

demo: $(STAMP)  ## the embedded demo: Figures 1-5 in miniature, offline, on CPU
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP)  ## the test suite (unit tests, workflow lint and dry runs, the demo workflow end to end)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
