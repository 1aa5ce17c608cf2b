"""Options of a run that change the arithmetic: schedules, warm-up, gradient clipping,
fine-tuning from another run's weights, torch.compile. Each is checked against figures
worked out by hand or against the same run without the option."""
import math

import pytest
import torch

from napari_unet.engine import Progress, load_checkpoint, preset_config, sample_dataset, train
from napari_unet.engine.training.setup import lr_factor, make_model


def tiny(**overrides):
    values = dict(steps=4, batch_size=2, patch_size=[32, 32], lr=1e-2, amp="off", device="cpu",
                  model_options={"base_channels": 4}, checkpoint_every=1000, val_every=1000,
                  lr_decay_steps=1000)
    values.update(overrides)
    return preset_config("industrial", **values)


@pytest.fixture(scope="module")
def dagm():
    return sample_dataset("dagm", n=4, size=32, seed=2)


def learning_rates(config, data, run_dir):
    return [e.lr for e in train(config, data, run_dir=run_dir) if isinstance(e, Progress)]


@pytest.mark.parametrize("schedule, factors", [
    # factor after step s of 4 (the optimizer's next rate): 1/2 (1 + cos(pi s / 4)), (1 - s/4)^0.9
    ("cosine", [(1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0]),
    ("poly", [0.75 ** 0.9, 0.5 ** 0.9, 0.25 ** 0.9, 0.0]),
    ("exponential_step", [1.0, 0.5, 0.5, 0.25]),  # halved every 2 steps
    ("constant", [1.0, 1.0, 1.0, 1.0]),
])
def test_schedules_reach_the_optimizer(dagm, tmp_path, schedule, factors):
    config = tiny(lr_schedule=schedule, lr_decay_rate=0.5, lr_decay_steps=2)
    assert learning_rates(config, dagm, tmp_path / "r") == pytest.approx(
        [1e-2 * f for f in factors], abs=1e-12)


def test_warm_up_ramps_linearly_then_hands_over_to_the_schedule(dagm, tmp_path):
    config = tiny(steps=6, warmup_steps=3, lr_schedule="cosine")
    assert [lr_factor(config, s) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lr_factor(config, 3) == pytest.approx(0.5)  # cos at half-way, as without warm-up
    # the optimizer steps at factor(0) first; Progress reports the rate for the next step
    rates = learning_rates(config, dagm, tmp_path / "r")
    assert rates == pytest.approx([1e-2 * lr_factor(config, s) for s in range(1, 7)], abs=1e-12)


def _parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _initial_parameters(config, data):
    torch.manual_seed(config.seed)  # as the trainer does before building the model
    return _parameters(make_model(config, data.in_channels, max(2, data.num_classes)))


def test_grad_clip_bounds_the_first_update(dagm, tmp_path):
    """SGD (momentum 0.5, Nesterov, no decay) moves the weights by 1.5 lr g on its first step;
    with the gradient's norm clipped to c, the step's norm is exactly 1.5 lr c."""
    clip, lr = 1e-3, 0.1
    config = tiny(steps=1, optimizer="sgd", momentum=0.5, weight_decay=0.0, lr=lr,
                  grad_clip=clip)
    before = _initial_parameters(config, dagm)
    list(train(config, dagm, run_dir=tmp_path / "clipped"))
    after = _parameters(load_checkpoint(tmp_path / "clipped").model)
    step = math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))
    assert step == pytest.approx(1.5 * lr * clip, rel=1e-3)
    # unclipped, the same step is far larger: the clip was doing the work
    list(train(config.replace(grad_clip=0.0), dagm, run_dir=tmp_path / "free"))
    free = _parameters(load_checkpoint(tmp_path / "free").model)
    assert math.sqrt(sum(float(((free[k] - before[k]) ** 2).sum()) for k in before)) > 10 * step


def test_fine_tuning_starts_from_the_other_runs_weights(dagm, tmp_path):
    list(train(tiny(steps=3), dagm, run_dir=tmp_path / "source"))
    source = _parameters(load_checkpoint(tmp_path / "source").model)
    # a rate too small to move anything: what the run ends with is what it started from
    list(train(tiny(steps=1, lr=1e-30), dagm, run_dir=tmp_path / "tuned",
               init_from=tmp_path / "source"))
    tuned = _parameters(load_checkpoint(tmp_path / "tuned").model)
    fresh = _initial_parameters(tiny(), dagm)
    for name in source:
        torch.testing.assert_close(tuned[name], source[name], rtol=0, atol=1e-6)
    assert max(float((source[k] - fresh[k]).abs().max()) for k in source) > 1e-3


def test_a_compiled_training_step_matches_eager(dagm, tmp_path, monkeypatch):
    """torch.compile in the real loop: the same losses and weights, within float reordering.

    Dynamo traces the step and AOTAutograd its backward ("aot_eager"); inductor's C++ code
    generation is left out, as it takes minutes on a 2-core CPU (benchmarks cover it)."""
    config = tiny(steps=2, channels_last=False)
    eager = [e.loss for e in train(config, dagm, run_dir=tmp_path / "eager")
             if isinstance(e, Progress)]
    real_compile, compiled_models = torch.compile, []

    def compile_quickly(model, **options):
        compiled_models.append(model)
        return real_compile(model, **{**options, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_quickly)
    torch._dynamo.reset()
    compiled = [e.loss for e in train(config.replace(compile=True), dagm,
                                      run_dir=tmp_path / "compiled") if isinstance(e, Progress)]
    assert len(compiled_models) == 1, "compile=True did not compile the model"
    assert compiled == pytest.approx(eager, rel=1e-4)
    a = _parameters(load_checkpoint(tmp_path / "eager").model)
    b = _parameters(load_checkpoint(tmp_path / "compiled").model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-5)
