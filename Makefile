# Two commands a newcomer needs: `make demo` and `make test`. Everything else is set up by them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel; override on a GPU machine, e.g. `make setup TORCH_SPEC="torch"`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo
# PyQt6 is the default binding (napari deprecated PyQt5; qtpy would pick PyQt5 first when both
# are installed); PyQt5 stays installed and its GUI tests run while napari supports it.
export QT_API ?= pyqt6

# System libraries napari needs to draw under Xvfb on a fresh Debian/Ubuntu machine.
APT_PACKAGES := xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
	libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0

.PHONY: setup system-deps venv test test-fast demo gui bench gpu-check clean

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
	$(PIP) install -q -e ".[pyqt6,pyqt5,test,export,cpu,zarr]"
	touch $@

venv: $(VENV)/.installed

# A command under a display: the one there is, else Xvfb; with neither, stop with a message
# (the GUI tests must run: a CI without Xvfb would otherwise be green with no widget tested).
WITH_DISPLAY = if [ -n "$$DISPLAY" ]; then "$$@"; \
	elif command -v xvfb-run >/dev/null; then xvfb-run -a -s "-screen 0 1600x1000x24" "$$@"; \
	else echo "make test: no display and no xvfb-run: install Xvfb (sudo apt-get install xvfb xauth, or make system-deps as root) so that the GUI tests run" >&2; exit 1; fi

# Lint, the whole suite on PyQt6 (the default extra), then the GUI tests again on PyQt5 (all
# but the soak and the long 3D and 4-channel training runs, whose Qt side the round trip covers).
# NAPARI_UNET_STRICT_TESTS: any skip but "needs a CUDA GPU" fails (tests/conftest.py).
test: system-deps venv
	@test -d ../shared/data || { echo "make test: ../shared/data not found: the suite reads the real data sets from ../shared/data beside the repository" >&2; exit 1; }
	$(VENV)/bin/ruff check .
	@set -- env NAPARI_UNET_STRICT_TESTS=1 QT_API=pyqt6 PYTEST_QT_API=pyqt6 $(PY) -m pytest -q $(PYTEST_ARGS); $(WITH_DISPLAY)
	@echo "GUI tests on PyQt5:"
	@set -- env NAPARI_UNET_STRICT_TESTS=1 QT_API=pyqt5 PYTEST_QT_API=pyqt5 $(PY) -m pytest -q -m "gui and not soak and not one_binding" \
		$(PYTEST_ARGS); $(WITH_DISPLAY)

demo: venv
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/napari_unet train --preset industrial --sample dagm --fold 0 --steps 100 \
		--batch-size 8 --patch-size 64 --val-every 50 --out $(DEMO_OUT) \
		--evaluate --predict $(DEMO_OUT)/data/images.tif
	@echo "demo: run folder $(DEMO_OUT): config.yaml, metrics.jsonl, checkpoints/, data/, predictions/"
	@echo "demo: open it in napari with 'make gui' (File > Open: $(DEMO_OUT)/predictions/)"

gui: system-deps venv
	$(VENV)/bin/napari -w napari-unet-torch __all__

bench: venv
	$(VENV)/bin/napari_unet benchmark --preset industrial --steps 10 --warmup 3

# On a GPU machine (torch's CUDA wheel in .venv): CUDA tests, speed.py and pipeline.py on the
# device, a 2-process NCCL run with a resume when there are 2+ GPUs; one report, gpu-check.md.
gpu-check: venv
	$(PY) benchmarks/gpu_check.py --out gpu-check.md

clean:
	rm -rf $(VENV) runs .pytest_cache
