# Two commands on a fresh machine:
#   make demo   set up .venv and train the built-in digits demo (checkpoints under ./runs)
#   make test   set up .venv with the test tools and run the whole test suite
# torch comes from constraints.txt (the CPU wheel, torch==2.13.0), never unpinned.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test setup clean

demo: $(VENV)/.demo-installed
	$(VENV)/bin/resumable demo

test: $(VENV)/.dev-installed
	$(PY) -m pytest

setup: $(VENV)/.dev-installed

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	touch $@

$(VENV)/.demo-installed: $(VENV)/.created pyproject.toml constraints.txt
	$(PIP) -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: $(VENV)/.created pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
