"""Device and precision choices: the one rule for mixed precision (bf16 only where the
device computes it natively) and every default that follows it."""
import os

import pytest
import torch
import yaml
from process_support import cli

from napari_unet.engine import Message, TrainConfig, predict, sample_dataset, train
from napari_unet.engine.plan import plan_run
from napari_unet.engine.runtime import CPU_BF16_ENV, cpu_has_fast_bf16, resolve_amp
from napari_unet.options import OPTIONS

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _probes_decide(monkeypatch):
    """The CPU probes decide unless a test sets the variable (the suite may run with it set
    to time itself as on a CPU without bf16)."""
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True),
                                                         (False, False, False)])
def test_cpu_bf16_detection_reads_the_cpu_probes(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_has_fast_bf16() is expected


def test_cpu_bf16_detection_survives_a_torch_without_probes(monkeypatch):
    def broken():
        raise RuntimeError("no cpuinfo")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert cpu_has_fast_bf16() is False


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), ("1", True),
                                             ("yes", True)])
def test_the_variable_overrides_the_probes(monkeypatch, value, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: not expected,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: not expected,
                        raising=False)
    monkeypatch.setenv(CPU_BF16_ENV, value)
    assert cpu_has_fast_bf16() is expected


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch, native):
    monkeypatch.setenv(CPU_BF16_ENV, "1" if native else "0")
    assert resolve_amp(CPU, "auto") == ("bf16" if native else "off", None)
    # what the user asks for is kept; an emulated bf16 is kept with a warning of its cost
    amp, note = resolve_amp(CPU, "bf16")
    assert amp == "bf16" and (note is None) is native
    if note:
        assert "no native bf16" in note and "--amp auto or off" in note and "\n" not in note
    assert resolve_amp(CPU, "off") == ("off", None)


def test_every_default_is_auto():
    """The CLI's --amp, the config and the engine's predict/evaluate default to the rule."""
    import inspect

    from napari_unet.engine import evaluate, predict_volume, run_benchmark
    from napari_unet.engine.prediction.predict import predict_with_model
    assert OPTIONS["amp"].default == "auto" and TrainConfig().amp == "auto"
    for function in (predict, evaluate, predict_volume, predict_with_model, run_benchmark):
        assert inspect.signature(function).parameters["amp"].default == "auto", function


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_plan_asks_the_cpu(monkeypatch, native):
    from napari_unet.engine.data.fingerprint import fingerprint
    monkeypatch.setenv(CPU_BF16_ENV, "1" if native else "0")
    plan = plan_run(fingerprint(sample_dataset("dagm"), None), "cpu")
    assert plan.values["amp"] == ("bf16" if native else "off")
    assert CPU_BF16_ENV in plan.reasons["amp"]


def _tiny_run(tmp_path, native, *flags):
    env = {**os.environ, CPU_BF16_ENV: "1" if native else "0"}
    done = cli("train", "--preset", "industrial", "--sample", "dagm", "--steps", "1",
               "--patch-size", "32", "--batch-size", "1", "--base-channels", "4",
               "--device", "cpu", "--val-every", "1", "--out", tmp_path / "run", *flags,
               env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done, yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())


@pytest.mark.parametrize("native", [True, False])
def test_a_named_preset_trains_in_the_precision_the_cpu_computes(tmp_path, native):
    """The Makefile's demo (a named preset, no --amp) on a CPU without bf16 runs fp32: config.yaml
    records what ran; no warning, since nobody asked for bf16."""
    done, saved = _tiny_run(tmp_path, native)
    assert saved["amp"] == ("bf16" if native else "off")
    assert "no native bf16" not in done.stderr


def test_an_explicit_bf16_on_a_cpu_without_it_runs_with_one_warning(tmp_path):
    done, saved = _tiny_run(tmp_path, False, "--amp", "bf16")
    assert saved["amp"] == "bf16"
    warnings = [line for line in done.stderr.splitlines() if "no native bf16" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --amp bf16")


def test_predict_warns_of_an_emulated_bf16_once(monkeypatch, tmp_path):
    data = sample_dataset("dagm")
    config = TrainConfig(model="tiny_unet", model_options={"base_channels": 4},
                         patch_size=[32, 32], batch_size=1, steps=1, val_every=1,
                         device="cpu", amp="off", fold=None)
    for _ in train(config, data.images[:2], data.masks[:2], run_dir=tmp_path / "run"):
        pass
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    events = list(predict(tmp_path / "run", data.images[0][..., :64, :64], amp="bf16",
                          device="cpu", tile_size=[32]))
    notes = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert len(notes) == 1 and "no native bf16" in notes[0]
    assert not [e for e in predict(tmp_path / "run", data.images[0][..., :64, :64],
                                   device="cpu", tile_size=[32])
                if isinstance(e, Message) and e.level == "warning"]


@pytest.mark.parametrize("native", [True, False])
def test_the_benchmark_command_follows_the_rule(native):
    env = {**os.environ, CPU_BF16_ENV: "1" if native else "0"}
    done = cli("benchmark", "--preset", "industrial", "--mode", "predict", "--size", "32",
               "--batch-size", "1", "--base-channels", "4", "--warmup", "0", "--steps", "1",
               "--device", "cpu", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if "industrial" in line)
    header = next(line for line in done.stdout.splitlines() if "amp" in line.split())
    assert row.split()[header.split().index("amp")] == ("bf16" if native else "off")
