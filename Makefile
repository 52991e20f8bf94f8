# The two commands the README documents:
#   make book   -> builds the book into _build/html (zero warnings, offline MathJax)
#   make test   -> runs the whole test suite (chapters executed with papermill,
#                  the book built once and rendered in headless Chromium, resume tests)
# Needs only python3, npm and (for the render tests) apt or an installed chromium.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
MATHJAX  := _vendor/site/mathjax
# Only what the TeX-input/CommonHTML-output component loads: the component itself, its
# fonts, the TeX extensions it may autoload, the menu and accessibility pieces.
MATHJAX_PARTS := tex-chtml.js input output/chtml ui a11y adaptors

.PHONY: all venv mathjax chromium book test check verify gpu-check clean

all: book

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch torchvision
	$(PIP) install -q -e ".[test]"
	touch $@

# MathJax 3 from npm, served by the book itself (html_extra_path in _config.yml), never a CDN.
mathjax: $(MATHJAX)/tex-chtml.js

$(MATHJAX)/tex-chtml.js:
	npm install --prefix _vendor/npm --no-save --no-audit --no-fund --loglevel=error mathjax@3
	rm -rf $(MATHJAX) && mkdir -p $(MATHJAX)/output
	cd _vendor/npm/node_modules/mathjax/es5 && cp -r $(filter-out output/chtml,$(MATHJAX_PARTS)) $(CURDIR)/$(MATHJAX)/
	cp -r _vendor/npm/node_modules/mathjax/es5/output/chtml _vendor/npm/node_modules/mathjax/es5/output/chtml.js $(MATHJAX)/output/
	cp _vendor/npm/node_modules/mathjax/LICENSE $(MATHJAX)/

# Debian's chromium for the render tests; installed only when missing (needs root + apt).
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "chromium missing and no root/apt: the render tests will be skipped (they fail under CI=true)"; fi

book: venv mathjax
	$(VENV)/bin/jupyter-book build . -W --keep-going

test: venv mathjax chromium
	$(PY) -m pytest -q

# The edit-test loop: the unit tests only (no chapters, book build or browser), about a minute on 2 cores.
check: venv
	$(PY) -m pytest -q -m "not book" --ignore=tests/test_book.py --ignore=tests/test_render.py --ignore=tests/test_verify.py

# Re-execute chapters (their full profile, as committed) and check that the cells tagged
# nbval-check-output reproduce their committed outputs (nbval, lax mode; timings sanitised).
# Needs MNIST under $$CLUTILS_DATA.  CHAPTERS=book/01_forgetting.ipynb checks one chapter.
CHAPTERS ?= book/01_forgetting.ipynb book/02_ewc.ipynb book/03_mas.ipynb book/04_selfless.ipynb book/05_scenarios.ipynb book/06_replay.ipynb
verify: venv
	CLUTILS_RECORDS=$$(mktemp -d) $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		--sanitize-with book/nbval_sanitize.cfg $(CHAPTERS)

# On a machine with a CUDA GPU, in one short call (under 5 minutes on an H100/H200): the CUDA-parametrised
# tests, a 10-task permuted MNIST run beside a hand-written loop (train and evaluation times), the step
# benchmarks, and K runs trained at once (stacked parameters, torch.func.vmap) against K one after
# another.  Reads MNIST under $$CLUTILS_DATA, else times a stand-in of MNIST's shapes (the same times).
# Everything it prints also goes to gpu-check.log.
gpu-check: venv
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device here')"
	( set -e; $(PY) -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; \
	  $(PY) -m pytest -q -k "cuda" tests/test_importance.py tests/test_resume.py tests/test_training.py; \
	  $(PY) benchmarks/bench_whole_run.py --device cuda --tasks 10 --repeats 2; \
	  $(PY) benchmarks/bench_step.py --device cuda --rounds 10; \
	  $(PY) benchmarks/bench_batched_runs.py --device cuda --k 1 10 50 --steps 100; \
	  $(PY) benchmarks/bench_importance.py --device cuda ) 2>&1 | tee gpu-check.log

clean:
	rm -rf _build _vendor
