# napari-deeppt — the two commands a new user runs (see README "Quick start"):
#   make demo   install everything and run the main job on the bundled sample slide
#   make test   install with test extras (+ Debian packages for a virtual display) and run the suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision pins live in constraints.txt, not pyproject (users bring their own build).
PIP_INSTALL := $(PIP) install --disable-pip-version-check -c constraints.txt
DEBIAN_GUI_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libfontconfig1 libdbus-1-3 \
	libglib2.0-0
DEMO_OUT ?= demo_output

.PHONY: demo test install install-test gui-deps lint bench clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[all]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP_INSTALL) -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	MPLBACKEND=Agg $(VENV)/bin/deeppt demo --out $(DEMO_OUT)

# Installs only what is missing; needs root (or sudo) on Debian/Ubuntu.
gui-deps:
	@missing=$$(for p in $(DEBIAN_GUI_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages for a virtual display: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: install-test gui-deps
	QT_QPA_PLATFORM=xcb MPLBACKEND=Agg xvfb-run -a -s "-screen 0 1280x1024x24" \
		$(PY) -m pytest $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

bench: install
	$(PY) benchmarks/bench_slide_reading.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
