# twinloop: every target sets itself up on a fresh machine (venv, pip, and as root the Debian packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.twinloop-installed
DEB_PACKAGES := libegl1 libegl-mesa0 libgl1 libosmesa6 libusb-1.0-0
export MUJOCO_GL ?= egl
# Keep test/demo DDS traffic on this host and off other people's graphs.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: demo test bench lint setup system-deps clean

setup: $(STAMP)

system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "not root: skipping Debian packages ($(DEB_PACKAGES)); install them yourself if rendering fails"; fi

$(STAMP): pyproject.toml robot_ws/src/twinloop_ros/setup.py | system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[ros,dev]"
	$(PY) -m pip install -q -e robot_ws/src/twinloop_ros
	@touch $(STAMP)

# The whole loop on the twin (docs/architecture.md); the run and its report.html go to
# $(RUNS)/<timestamp>/. QUICK=1: the small budget (about 3 minutes on 2 cores; CI runs it).
RUNS ?= runs
demo: setup
	$(VENV)/bin/twinloop pipeline $(if $(QUICK),--quick) --runs $(RUNS)

test: setup
	$(PY) -m pytest -q

bench: setup  # about 20 minutes: twin + DDS, recording, rewards, learner updates/s
	$(PY) benchmarks/twin.py
	$(PY) benchmarks/recording.py
	$(PY) benchmarks/reward.py
	$(PY) benchmarks/learner.py --threads 1
	$(PY) benchmarks/actor_timing.py
	@echo "learning in the twin (about an hour): $(PY) benchmarks/finetune.py"
	@echo "ASID system identification (about 30 minutes): $(PY) benchmarks/asid.py"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
