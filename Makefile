# edgeloop — two commands: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-learning system-deps venv clean

# Debian packages the project runs against: a real broker, and for the demo a camera mock.
system-deps:
	@./.ci/system-deps mosquitto

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: system-deps $(STAMP)
	@./.ci/system-deps chromium ffmpeg rtsp-server-perl
	$(PY) -m pytest

# The whole helmet loop on one machine (docs/demo.md); DEMO_FLAGS=--fast for the quick version.
demo: $(STAMP)
	@./.ci/system-deps mosquitto ffmpeg rtsp-server-perl
	$(VENV)/bin/edgeloop demo $(DEMO_FLAGS)

# Quick benchmarks (a few minutes in all). The learning benchmark trains the base model from
# scratch and takes ~25 minutes on 2 cores: `make bench-learning`.
QUICK_BENCH := bench/inference.py bench/swap_in_process.py bench/trigger_latency.py \
               bench/ingest.py bench/agent_outbox.py bench/hotswap.py

bench: system-deps $(STAMP)
	@for b in $(QUICK_BENCH); do echo "== $$b"; $(PY) $$b || exit 1; done

bench-learning: system-deps $(STAMP)
	$(PY) bench/learning.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
