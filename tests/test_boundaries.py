"""The engine and the models never import Qt or napari (ARCHITECTURE.md)."""
import subprocess
import sys

GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui")


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return {name.split(".")[0] for name in result.stdout.split()}


def test_engine_and_models_import_no_gui():
    loaded = _modules_after_import(
        "import napari_unet.engine as e, napari_unet.models, napari_unet.io, napari_unet.cli; "
        "[getattr(e, name) for name in e.__all__]")
    assert "torch" in loaded  # the check itself works
    assert not loaded & set(GUI_MODULES)


def test_package_import_is_light():
    loaded = _modules_after_import("import napari_unet")
    assert not loaded & {"torch", *GUI_MODULES}


def test_cli_help_runs():
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "benchmark"):
        assert command in result.stdout


def test_events_and_config_do_not_import_torch():
    """The Train widget runs training in a child process: its own process needs no torch."""
    loaded = _modules_after_import(
        "from napari_unet.engine import from_json, TrainConfig, PRESETS, Progress")
    assert "torch" not in loaded


def test_public_names_are_the_functions_not_same_named_modules():
    """A submodule named like a public function would shadow it once imported."""
    code = ("import napari_unet.engine as e, importlib, types; "
            "[importlib.import_module('napari_unet.engine.' + m) for m in set(e._EXPORTS.values())]; "
            "bad = [n for n in e.__all__ if isinstance(getattr(e, n), types.ModuleType)]; "
            "print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True)
