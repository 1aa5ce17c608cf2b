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
	@if command -v xvfb-run >/dev/null && ldconfig -p | grep -q libxkbcommon-x11; then \
		echo "system packages: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "system packages: installing $(APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	elif command -v apt-get >/dev/null; then \
		echo "system packages: missing; run: sudo apt-get install $(APT_PACKAGES)"; \
	else \
		echo "system packages: not a Debian machine; GUI tests need an X server (xvfb) and OpenGL"; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[pyqt5,test]"
	touch $@

venv: $(VENV)/.installed

test: system-deps venv
	@if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q $(PYTEST_ARGS); \
	else \
		$(PY) -m pytest -q $(PYTEST_ARGS); \
	fi

demo: venv
	$(VENV)/bin/napari_unet train --preset industrial --sample dagm --steps 120 --batch-size 8 \
		--amp bf16 --out $(DEMO_OUT) --evaluate --predict $(DEMO_OUT)/sample_image.tif --overwrite-run
	@echo "demo: run folder $(DEMO_OUT) (config.yaml, metrics.jsonl, checkpoints/, predictions/)"

gui: system-deps venv
	$(VENV)/bin/napari -w napari-unet-torch

bench: venv
	$(VENV)/bin/napari_unet benchmark --preset industrial --steps 10 --warmup 3

clean:
	rm -rf $(VENV) runs .pytest_cache
