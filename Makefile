# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install stress lint figures docs clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin torch first: without the pin pip resolves a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[ext,dev]' torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default data: the certified minimal rank of the VADER
# movie-review sentences (GPT-2 tokenizer), then the paper's Table 2 row for comparison
# (soft-impute, ranks 0/255/511/767, λ = 1e-4, 1000 iterations).
demo: $(STAMP)
	$(VENV)/bin/rankkit estimate vader:movie
	$(VENV)/bin/rankkit estimate vader:movie --method soft-impute --ranks 0,255,511,767 \
		--figure rankkit_out/estimate_vader_movie_table2.png

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

stress: $(STAMP)
	$(VENV)/bin/rankkit stress

lint: $(STAMP)
	$(VENV)/bin/ruff check rankkit rankkit_ext tests analyses benchmarks docs

figures: $(STAMP)
	$(VENV)/bin/rankkit figures

# The API reference (from the numpydoc docstrings) and the two example notebooks, rendered
# as stored: offline, every warning an error. Open docs/_build/html/index.html.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -j 1 -b html -d docs/_build/doctrees docs docs/_build/html

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build docs/_generated
