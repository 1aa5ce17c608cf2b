# Two commands a newcomer needs: `make demo` and `make test`. Everything else is set up by them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel; override on a GPU machine, e.g. `make setup TORCH_SPEC="torch"`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo

# System libraries napari needs to draw under Xvfb on a fresh Debian/Ubuntu machine.
APT_PACKAGES := xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
	libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0

.PHONY: setup system-deps venv test test-fast demo gui bench clean

setup: venv

system-deps:
	@missing=""; if command -v dpkg-query >/dev/null; then \
		for p in $(APT_PACKAGES); do \
			dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
		done; fi; \
	if [ -z "$$missing" ]; then \
		echo "system packages: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "system packages: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "system packages missing:$$missing (install them with: sudo apt-get install$$missing)"; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[pyqt5,test]"
	touch $@

venv: $(VENV)/.installed

# CI's suite: every test runs (a missing display or ../shared stops it with a message, and a
# skip other than "needs a CUDA GPU" fails: tests/conftest.py); each test has a time limit.
test: system-deps venv
	@test -d ../shared/data || { echo "make test: ../shared/data not found: the suite reads the real data sets from ../shared/data beside the repository" >&2; exit 1; }
	@if [ -n "$$DISPLAY" ]; then \
		NAPARI_UNET_STRICT_TESTS=1 $(PY) -m pytest -q $(PYTEST_ARGS); \
	elif command -v xvfb-run >/dev/null; then \
		NAPARI_UNET_STRICT_TESTS=1 xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q $(PYTEST_ARGS); \
	else \
		echo "make test: no display and no xvfb-run: install Xvfb (sudo apt-get install xvfb xauth, or run make system-deps as root) so that the GUI tests run" >&2; exit 1; \
	fi

demo: venv
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/napari_unet train --preset industrial --sample dagm --fold 0 --steps 100 \
		--batch-size 8 --patch-size 128 --val-every 50 --amp bf16 --out $(DEMO_OUT) \
		--evaluate --predict $(DEMO_OUT)/data/images.tif
	@echo "demo: run folder $(DEMO_OUT): config.yaml, metrics.jsonl, checkpoints/, data/, predictions/"
	@echo "demo: open it in napari with 'make gui' (File > Open: $(DEMO_OUT)/predictions/)"

gui: system-deps venv
	$(VENV)/bin/napari -w napari-unet-torch __all__

bench: venv
	$(VENV)/bin/napari_unet benchmark --preset industrial --steps 10 --warmup 3

clean:
	rm -rf $(VENV) runs .pytest_cache
