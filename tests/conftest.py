"""Suite-wide rules: under `make test` (NAPARI_UNET_STRICT_TESTS=1) nothing skips silently.

`make test` is what CI runs, and CI always has a display (Xvfb) and ../shared. There a missing
display or data folder stops the run at once with a message, and any skip other than "needs a
CUDA GPU" is a failure: a green run has tested the widgets, the reader, the writers and the
real data sets. A developer running plain `pytest` keeps the skips (with their reasons).
"""
import json
import os
from pathlib import Path

import pytest
from gui_support import NO_DISPLAY
from process_support import adopt_orphans, kill_left_behind

STRICT = os.environ.get("NAPARI_UNET_STRICT_TESTS") == "1"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# the only skip a strict run allows: hardware this machine does not have
ALLOWED_SKIP = "CUDA"


def pytest_configure(config):
    # a child that dies on a signal (a torchrun worker's SIGABRT) prints its Python stack
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    # the same arithmetic on every machine: `amp auto` is bf16 only where the CPU computes it
    # natively, and CI's CPUs differ (one turned a tiny 3D net's loss to nan in bf16). Tests of
    # the bf16 rule set this themselves; NAPARI_UNET_CPU_BF16=1 runs the suite in bf16.
    os.environ.setdefault("NAPARI_UNET_CPU_BF16", "0")
    adopt_orphans()  # orphaned grandchildren (torchrun workers) stay ours to find, below
    if not STRICT:
        return
    problems = []
    if NO_DISPLAY:
        problems.append("no display: run the suite under xvfb-run (install the xvfb package) "
                        "or set DISPLAY")
    if not SHARED_DATA.is_dir():
        problems.append(f"no data sets at {SHARED_DATA}: the suite needs ../shared/data beside "
                        f"the repository")
    if problems:
        raise pytest.UsageError("make test cannot run every test: " + "; ".join(problems))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) \
            else str(report.longrepr)
        if ALLOWED_SKIP not in reason:
            report.outcome = "failed"
            report.longrepr = (f"skipped under make test (NAPARI_UNET_STRICT_TESTS=1), where "
                               f"nothing may skip but CUDA-only tests: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module that skips as a whole (pytest.importorskip) is a failure under make test."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped under make test: {report.longrepr}"


# -- no child survives its test --------------------------------------------------------------
@pytest.fixture(autouse=True)
def no_process_survives_its_test():
    """A test that leaves a process running fails, and the process is killed: a stop test that
    fails must not leave its child training on, loading the machine for every later test."""
    yield
    left = kill_left_behind()
    if left:
        pytest.fail(f"the test left {len(left)} process(es) running (killed now): {left}",
                    pytrace=False)


# -- built-in models for tests ---------------------------------------------------------------------
# name: (model family of export_support, card); weights drawn, not trained
FAKE_BUILTINS = {
    "nuclei": ("tiny_unet", {"title": "Nuclei", "summary": "2D nuclei (a test model)",
                             "kind": "2d", "channels": 1, "diameter": 17}),
    "nuclei3d": ("unet3d", {"title": "Nuclei 3D", "summary": "3D nuclei (a test model)",
                            "kind": "3d", "channels": 4, "diameter": 12}),
}


@pytest.fixture
def builtin_models(tmp_path_factory, monkeypatch):
    """napari_unet.builtin pointed at a folder of small fake built-in models (FAKE_BUILTINS:
    NAME/best.pt of seeded weights and NAME/card.json); returns that folder. The child
    processes a test starts do not see them (they import the package's own folder)."""
    from export_support import make_run

    from napari_unet import builtin

    here = tmp_path_factory.mktemp("builtin")
    for name, (family, card) in FAKE_BUILTINS.items():
        make_run(here, family, name=name, weights=builtin.WEIGHTS)
        (here / name / builtin.CARD_JSON).write_text(json.dumps({"name": name, **card}))
    monkeypatch.setattr(builtin, "HERE", here)
    builtin.card.cache_clear()
    yield here
    builtin.card.cache_clear()

