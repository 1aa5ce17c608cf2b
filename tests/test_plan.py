"""--preset auto: the plan made from a fingerprint, on hand-made data whose answers are known."""
import numpy as np
import pytest
import yaml
from process_support import cli

from napari_unet.cli_progress import planned_text
from napari_unet.engine import Finished, Planned, Started, from_json, train
from napari_unet.engine.data.dataset import Dataset
from napari_unet.engine.data.fingerprint import Fingerprint, fingerprint
from napari_unet.engine.plan import activation_bytes, plan_lines, plan_run
from napari_unet.engine.training.calibration import fit_to_minutes


def _fp(**changes) -> Fingerprint:
    """A 2D, 8-bit, bright, one-channel data set of 512^2 images with common objects."""
    values = dict(spatial_dims=2, samples=10, channels=1, rgb=False, dtype="uint8",
                  smallest_size=(512, 512), median_size=(512, 512), largest_size=(512, 512),
                  spacing=(1.0, 1.0), anisotropy=1.0, percentiles=((3.0, 90.0, 250.0),),
                  mean=(100.0,), std=(40.0,), classes=2, foreground_fraction=0.3, objects=50,
                  median_object_extent=(20, 20))
    values.update(changes)
    if values["spatial_dims"] == 3 and "spacing" not in changes:
        values["spacing"] = (1.0, 1.0, 1.0)
    return Fingerprint(**values)


def test_the_plan_counts_the_classes_of_the_head_it_plans():
    # background / interior / boundary of --instances boundary: a head of 3, said as 3
    plan = plan_run(_fp(classes=3))
    assert plan.values["loss"] == "dice_ce"
    assert plan.reasons["loss"].startswith("3 classes (background included)")


def _3d(**changes):
    values = dict(spatial_dims=3, smallest_size=(120, 120, 120), median_size=(120, 120, 120),
                  largest_size=(120, 120, 120), median_object_extent=(10, 10, 10))
    values.update(changes)
    return _fp(**values)


def test_bright_8bit_images_train_a_padded_unet_on_256_patches():
    plan = plan_run(_fp())
    v = plan.values
    assert v["model"] == "unet" and v["spatial_dims"] == 2
    assert v["model_options"]["padding"] == "same" and v["model_options"]["depth"] == 5
    assert v["patch_size"] == [256, 256] and v["batch_size"] == 4
    assert v["normalization"] == "minus_one_one" and v["loss"] == "dice_ce"
    assert v["rot90"] == [0, 1, 2, 3] and v["hflip"] == v["vflip"] == 0.5
    assert set(plan.reasons) == set(v)  # every choice says why
    assert all(line.count(" = ") and ": " in line for line in plan.lines())


def test_small_and_mixed_sizes_get_a_patch_that_fits_and_smaller_images_are_mirrored():
    plan = plan_run(_fp(smallest_size=(40, 30), median_size=(90, 100), largest_size=(300, 200)))
    assert plan.values["patch_size"] == [96, 96]  # the median rounded up to 16, square
    assert "mirrored" in plan.reasons["patch_size"]
    assert plan.values["model_options"]["depth"] == 4  # 3 poolings: 96 -> 12 at the bottom
    # the pixel budget (28 patches) capped by twice the data (10 images of 90 x 100)
    assert plan.values["batch_size"] == min(262_144 // (96 * 96), 2 * 10 * 90 * 100 // (96 * 96))


def test_dim_16bit_data_get_a_zscore_and_rare_objects_a_foreground_loss():
    plan = plan_run(_fp(dtype="uint16", percentiles=((100.0, 300.0, 2000.0),),
                        foreground_fraction=0.004))
    assert plan.values["normalization"] == "zscore"
    assert "2000" in plan.reasons["normalization"]
    assert plan.values["loss"] == "dice_ce_foreground"
    assert plan.values["foreground_oversample"] == 0.5
    assert "rare" in plan.reasons["loss"]
    dim_8bit = plan_run(_fp(percentiles=((0.0, 10.0, 60.0),)))
    assert dim_8bit.values["normalization"] == "zscore"


def test_rgb_pictures_plan_like_grey_ones_with_three_channels():
    plan = plan_run(_fp(channels=3, rgb=True, percentiles=((0.0, 120.0, 255.0),) * 3))
    assert plan.values["model"] == "unet" and plan.values["normalization"] == "minus_one_one"


def test_rare_objects_centre_half_the_patches_and_the_reason_gives_their_size():
    # every image holds some (no good parts to learn): half of the patches, as nnU-Net's rule
    rare = plan_run(_fp(foreground_fraction=0.017, empty_share=0.0, median_object_share=0.03))
    assert rare.values["loss"] == "dice_ce_foreground"
    assert rare.values["foreground_oversample"] == 0.5
    assert "the median object is 3% of its image" in rare.reasons["foreground_oversample"]


def test_inspection_data_with_many_good_parts_centre_a_third_of_the_patches_on_defects():
    # DAGM 2007 class 1: half the images without a defect, defects of 3 % of their image
    dagm = plan_run(_fp(foreground_fraction=0.017, empty_share=0.5, median_object_share=0.03))
    assert dagm.values["loss"] == "dice_ce_foreground"
    assert dagm.values["foreground_oversample"] == 0.33
    assert "50% of the images hold none" in dagm.reasons["foreground_oversample"]
    # small defects (a random patch misses them) or every image with some: half, as before
    tiny = plan_run(_fp(foreground_fraction=0.004, empty_share=0.5, median_object_share=0.005))
    assert tiny.values["foreground_oversample"] == 0.5
    assert "0.5% of its image" in tiny.reasons["foreground_oversample"]
    full = plan_run(_fp(foreground_fraction=0.017, empty_share=0.0, median_object_share=0.03))
    assert full.values["foreground_oversample"] == 0.5


def test_rare_objects_fit_the_threshold_after_training_unless_given_or_live():
    rare = plan_run(_fp(foreground_fraction=0.017, empty_share=0.5, median_object_share=0.03))
    assert rare.values["fit_threshold"] is True
    assert "more of them than the images hold" in rare.reasons["fit_threshold"]
    assert rare.config().fit_threshold is True
    given = rare.config(threshold=0.7)  # the user's threshold is the threshold
    assert given.fit_threshold is False and given.threshold == 0.7
    assert given.plan["fit_threshold"] == "off: the threshold is given by the user"
    live = plan_run(_fp(foreground_fraction=0.017, empty_share=0.5, median_object_share=0.03),
                    live=True)
    assert live.values["fit_threshold"] is False and "a live run" in live.reasons["fit_threshold"]
    common = plan_run(_fp(foreground_fraction=0.2))  # objects not rare: 0.5 as trained
    assert "fit_threshold" not in common.values and common.config().fit_threshold is False


def test_thin_objects_keep_full_resolution_and_the_plan_says_why():
    membranes = plan_run(_fp(foreground_width=4.5))  # ISBI's membranes: about 7 px
    assert membranes.values["resample"] == 1
    assert membranes.reasons["resample"].startswith("thin objects (4.5 px wide")
    blobs = plan_run(_fp(foreground_width=40.0))
    assert blobs.values["resample"] == 1 and "thin" not in blobs.reasons["resample"]


def test_isotropic_volumes_flip_on_every_axis():
    plan = plan_run(_3d())
    v = plan.values
    assert v["model"] == "unet3d" and v["patch_size"] == [64, 64, 64]
    assert v["flip_all_axes"] is True and v["batch_size"] == 2
    assert v["model_options"]["depth"] == 5  # 4 poolings: 64 -> 4
    assert v["lr"] == 1e-3


def test_a_coarse_z_gets_fewer_voxels_and_no_mirroring_along_it():
    plan = plan_run(_3d(spacing=(2.0, 0.5, 0.5), anisotropy=4.0))
    z, y, x = plan.values["patch_size"]
    assert z < y == x and z == 16 and y >= 112
    assert plan.values["flip_all_axes"] is False
    assert "coarse" in plan.reasons["patch_size"]
    assert plan.values["model_options"]["depth"] == 3  # poolings limited by the 16-voxel Z


def test_mri_like_volumes_are_normalised_case_by_case():
    plan = plan_run(_3d(channels=4, dtype="int16", classes=4,
                        percentiles=((0.0, 0.0, 900.0),) * 4))
    assert plan.values["normalization"] == "zscore_case"
    assert plan.values["loss"] == "dice_ce"  # 3 classes besides background


def test_the_batch_is_capped_by_the_memory_there_is():
    per_item = activation_bytes([256, 256], 16, 2)
    plan = plan_run(_fp(), memory_bytes=per_item * 2.2)  # half of it: one item
    assert plan.values["batch_size"] == 1 and "memory" in plan.reasons["batch_size"]
    roomy = plan_run(_fp(), memory_bytes=per_item * 1000)
    assert roomy.values["batch_size"] == 4 and "memory" not in roomy.reasons["batch_size"]


def test_a_gpu_gets_bigger_patches_and_wider_networks():
    plan = plan_run(_fp(), device="gpu")
    assert plan.values["patch_size"] == [512, 512]
    assert plan.values["model_options"]["base_channels"] == 32


def test_the_user_wins_over_the_plan_and_config_yaml_keeps_the_reasons():
    plan = plan_run(_fp())
    config = plan.config(lr=5e-4, batch_size=None)
    assert config.preset == "auto" and config.lr == 5e-4
    assert config.batch_size == plan.values["batch_size"]  # None: not given
    assert config.plan["lr"] == "given by the user"
    assert config.plan["batch_size"] == plan.reasons["batch_size"]
    saved = yaml.safe_load(config.to_yaml())
    assert saved["preset"] == "auto" and saved["plan"]["patch_size"]


def _tiny_dataset():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (1, 48, 40), dtype=np.uint8) for _ in range(4)]
    masks = [(image[0] > 128).astype(np.uint8) for image in images]
    return Dataset(images, masks, [f"i{k}" for k in range(4)], 2)


def test_minutes_leave_room_for_the_time_spent_and_the_validations(monkeypatch):
    import time

    from napari_unet.engine.training import calibration

    monkeypatch.setattr(calibration, "seconds_per_step", lambda *a, **k: 0.5)
    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset)).config(minutes=1.0, batch_size=2,
                                                   patch_size=[32, 32])
    ten_seconds_ago = time.monotonic() - 10.0
    fitted, per_step = fit_to_minutes(config, dataset, ten_seconds_ago)
    assert per_step == 0.5
    left = 60 * (1 - calibration.RESERVE_SHARE) - 10.0  # less what was spent already
    assert fitted.steps == pytest.approx(left / 0.5, abs=1)
    assert fitted.val_every == fitted.checkpoint_every == -(-fitted.steps // 4)
    # a run given the same steps (benchmarks' --steps) gets the fitted run's periods and warm-up
    same = calibration.with_steps(config.replace(minutes=None), fitted.steps)
    assert [getattr(same, key) for key in ("steps", "val_every", "checkpoint_every",
                                           "warmup_steps")] == \
        [getattr(fitted, key) for key in ("steps", "val_every", "checkpoint_every",
                                          "warmup_steps")]
    validated, _ = fit_to_minutes(config.replace(fold=0, folds=2), dataset, ten_seconds_ago)
    one = calibration.validation_seconds(config.replace(fold=0, folds=2), dataset, 0.5)
    assert one > 0 and validated.steps == pytest.approx(
        (left - calibration.VALIDATIONS * one) / 0.5, abs=1)


def test_a_budget_too_short_for_its_fixed_costs_is_said_up_front(monkeypatch):
    """Issue 32: --minutes 0.05 planned 10 steps, ran 21 s and blamed the machine."""
    from napari_unet.engine.training import calibration
    from napari_unet.errors import ConfigError

    def untimed(*args, **kwargs):
        raise AssertionError("a budget shorter than the timing must not be timed")

    monkeypatch.setattr(calibration, "seconds_per_step", untimed)
    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset)).config(minutes=0.05, batch_size=2,
                                                   patch_size=[32, 32])
    with pytest.raises(ConfigError, match=r"--minutes 0.05 \(3 s\) is too short to plan: "
                                          r"timing the first steps alone .* --minutes 0.4 or"):
        fit_to_minutes(config, dataset)
    # timed, then too short for 10 steps: what the start took, a step, and what would do
    monkeypatch.setattr(calibration, "seconds_per_step", lambda *a, **k: 5.0)
    with pytest.raises(ConfigError, match=r"--minutes 0.5 leaves room for 5 steps: .* a step "
                                          r"takes 5.00 s; give --minutes 0.9 or more for 10"):
        fit_to_minutes(config.replace(minutes=0.5), dataset)


def test_a_fitted_threshold_takes_at_most_a_tenth_of_the_minutes(monkeypatch):
    """A fit of 24 M pixels estimated at 100 minutes made `--minutes 1` refuse to run and
    ask for `--minutes 0.5`: the fit is capped at FIT_SHARE of the budget (it stops at the
    time limit with the images it has) and the budget asked for counts it."""
    from types import SimpleNamespace

    from napari_unet.engine.training import calibration, pace
    from napari_unet.errors import ConfigError

    monkeypatch.setattr(calibration, "seconds_per_step", lambda *a, **k: 1.0)
    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset)).config(minutes=1.0, batch_size=2,
                                                   patch_size=[32, 32], fit_threshold=True)
    large = SimpleNamespace(masks=[np.zeros((5000, 5000), np.uint8)])
    assert pace.threshold_fit_seconds(config, large, 1.0, capped=False) > 6000
    assert pace.threshold_fit_seconds(config, large, 1.0) == pytest.approx(6.0)  # 10 % of 60 s
    fitted, _ = fit_to_minutes(config, large)
    assert fitted.steps == pytest.approx(60 * (1 - calibration.RESERVE_SHARE) - 6, abs=1)
    monkeypatch.setattr(calibration, "seconds_per_step", lambda *a, **k: 5.0)
    with pytest.raises(ConfigError, match=r"--minutes 0.4 leaves room for 4 steps: .* a step "
                                          r"takes 5.00 s; give --minutes 1 or more for 10"):
        fit_to_minutes(config.replace(minutes=0.4), large)


def test_the_printed_plan_is_what_config_yaml_holds(monkeypatch):
    """Issue 32: the plan printed `warmup_steps = 1: 30 warm-up steps` (the reason of the
    planned 30, the value cut to fit the steps)."""
    from napari_unet.engine.training import calibration

    monkeypatch.setattr(calibration, "seconds_per_step", lambda *a, **k: 1.0)
    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset)).config(minutes=0.5, batch_size=2,
                                                   patch_size=[32, 32])
    assert config.warmup_steps == 30
    fitted, _ = fit_to_minutes(config, dataset)
    assert 10 <= fitted.steps < 30 and fitted.warmup_steps == fitted.steps // 10
    [line] = [line for line in plan_lines(fitted) if line.startswith("warmup_steps")]
    assert line == (f"warmup_steps = {fitted.warmup_steps}: a tenth of the {fitted.steps} "
                    f"steps (the plan's 30, cut to fit)")
    saved = type(fitted).from_yaml(fitted.to_yaml())
    assert saved.warmup_steps == fitted.warmup_steps and saved.plan == fitted.plan


@pytest.mark.parametrize("minutes, eager, compiled, compiling, expected", [
    (10.0, 0.05, 0.03, 60.0, True),  # 570 s: 17,000 steps compiled against 11,400 eager
    (10.0, 0.05, 0.045, 60.0, False),  # 11,333 against 11,400: a 10 % faster step is not
    (3.0, 0.05, 0.03, 90.0, False),  # 171 s: 2,700 against 3,420, the compile eats the gain
    (2.0, 0.05, 0.01, 1.0, False),  # 114 s: too short even to time a compiled step
])
def test_the_plan_compiles_on_a_gpu_only_where_the_budget_repays_it(
        monkeypatch, minutes, eager, compiled, compiling, expected):
    """Issue 35: torch.compile from a timing (here injected: eager and compiled seconds per
    step, seconds of compiling), and the steps still fit the minutes, the compile included."""
    from napari_unet.engine.training import calibration

    timed = []
    monkeypatch.setattr(calibration, "seconds_per_step", lambda *a, **k: eager)

    def time_compiled(config, *args, **kwargs):
        timed.append(config.compile)
        return compiled, compiling
    monkeypatch.setattr(calibration, "time_compiled", time_compiled)
    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset), device="gpu").config(
        minutes=minutes, batch_size=2, patch_size=[32, 32], device="cpu")
    assert config.compile is False and config.plan["compile"] == calibration.COMPILE_TIMED
    fitted, per_step = fit_to_minutes(config, dataset)
    assert fitted.compile is expected
    reason = fitted.plan["compile"]
    assert reason.startswith("on:" if expected else "off:"), reason
    assert timed == ([] if minutes == 2.0 else [False])  # time_compiled compiles itself
    if minutes == 2.0:
        assert "too short to time a compiled step" in reason
    else:
        assert f"{1e3 * compiled:.3g} ms against {1e3 * eager:.3g} ms eager" in reason
        assert f"compiling took {compiling:.0f} s" in reason
    assert per_step == (compiled if expected else eager)
    budget = minutes * 60 * (1 - calibration.RESERVE_SHARE)
    spent = fitted.steps * per_step + (compiling if expected else 0.0)
    assert budget - 2 * per_step - 1 < spent <= budget  # fills the minutes, compile included
    assert any(line.startswith(f"compile = {expected}: ") for line in plan_lines(fitted))


@pytest.mark.parametrize("device, words", [("cpu", "off on a CPU"),
                                           ("mps", "off on an Apple GPU")])
def test_the_plan_never_compiles_on_a_cpu_and_says_why(monkeypatch, device, words):
    from napari_unet.engine.training import calibration

    def untimed(*args, **kwargs):
        raise AssertionError("no compiled step is timed here")
    monkeypatch.setattr(calibration, "seconds_per_step", lambda *a, **k: 0.05)
    monkeypatch.setattr(calibration, "time_compiled", untimed)
    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset), device=device).config(
        minutes=10.0, batch_size=2, patch_size=[32, 32], device="cpu")
    fitted, _ = fit_to_minutes(config, dataset)
    assert fitted.compile is False and fitted.plan["compile"].startswith(words)
    # the user's --compile wins, and is not timed against eager either
    given = plan_run(fingerprint(dataset), device="gpu").config(
        minutes=10.0, batch_size=2, patch_size=[32, 32], device="cpu", compile=True)
    fitted, _ = fit_to_minutes(given, dataset)
    assert fitted.compile is True and fitted.plan["compile"] == "given by the user"


def test_a_timed_run_measures_its_steps_and_trains_exactly_them(tmp_path, monkeypatch):
    from napari_unet.engine.training import calibration

    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset)).config(
        minutes=0.3, amp="off", device="cpu", batch_size=2, patch_size=[32, 32],
        model_options={"padding": "same", "base_channels": 4, "depth": 3, "norm": "batch",
                       "dropout": 0.0})
    assert calibration.seconds_per_step(config, dataset, 0.5) > 0  # a real timing
    # the fit from a timing of 1 s a step, whatever this machine's load: 18 s leave 17 steps
    measured = []
    monkeypatch.setattr(calibration, "seconds_per_step",
                        lambda *args, **kwargs: measured.append(1) or 1.0)
    fitted, per_step = fit_to_minutes(config, dataset, seconds=0.5)
    assert measured and per_step == 1.0
    assert 15 <= fitted.steps <= 17 and fitted.warmup_steps <= fitted.steps // 10
    events = list(train(fitted, dataset, run_dir=tmp_path / "run"))
    assert isinstance(events[-1], Finished) and events[-1].step == fitted.steps


def test_a_timed_run_past_its_time_ends_there_with_a_checkpoint(tmp_path):
    import time

    from napari_unet.engine import Message, load_checkpoint, time_limit

    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset)).config(
        minutes=1.0, steps=40, amp="off", device="cpu", batch_size=2, patch_size=[32, 32],
        model_options={"padding": "same", "base_channels": 4, "depth": 3, "norm": "batch",
                       "dropout": 0.0})
    started = time.monotonic()
    assert time_limit(config, started) == pytest.approx(started + 60 * 0.975)
    assert time_limit(config.replace(minutes=None), started) is None
    # a machine far slower than timed: the minutes were up before the first step ended
    events = list(train(config, dataset, run_dir=tmp_path / "run", deadline=started))
    [note] = [e for e in events if isinstance(e, Message)]
    assert "the time is up: training ends at step 1 of 40" in note.text
    # issue 32: it says what the steps took, and blames nothing it cannot know
    assert "machine" not in note.text and "s a step with the validations" in note.text
    assert isinstance(events[-1], Finished) and events[-1].step == 1
    assert load_checkpoint(tmp_path / "run").step == 1
    on_time = list(train(config.replace(steps=3), dataset, run_dir=tmp_path / "r2",
                         deadline=time.monotonic() + 3600))
    assert on_time[-1].step == 3 and not any(isinstance(e, Message) for e in on_time)


def test_the_pace_rule_on_hand_made_numbers():
    """Issue 36: the steps of a run fitted to minutes follow its own pace (training.pace)."""
    from napari_unet.engine.training import pace

    # 26 of 257 steps done, 400 s left: a step of 1 s fits 426, of 2 s 226; up to 10 % more
    # (240 s left: 266) or 2 % fewer (228 s: 254) the steps stay, 4 % fewer (220 s: 246) not
    # (the time limit would cut the schedule); never fewer than those done and a few
    assert pace.refit_steps(26, 257, per_step=1.0, left=400.0, pause=0.0) == 426
    assert pace.refit_steps(26, 257, per_step=2.0, left=400.0, pause=0.0) == 226
    assert pace.refit_steps(26, 257, per_step=1.0, left=240.0, pause=0.0) == 257
    assert pace.refit_steps(26, 257, per_step=1.0, left=228.0, pause=0.0) == 257
    assert pace.refit_steps(26, 257, per_step=1.0, left=220.0, pause=0.0) == 246
    assert pace.refit_steps(200, 257, per_step=1.0, left=-5.0, pause=0.0) == \
        200 + pace.LEAST_LEFT
    # the validations still due (three periods and the end) keep their time aside
    assert pace.pauses_left(26, 257) == 4 and pace.pauses_left(195, 257) == 1
    assert pace.pauses_left(257, 257) == 0
    assert pace.refit_steps(26, 257, per_step=1.0, left=400.0, pause=10.0) == 386
    # fits at about 10, 25, 50, 75 % of the steps, 20 timed steps apart, none past 75 %
    assert pace.next_fit(3, 257) == 26 and pace.next_fit(26, 257) == 65
    assert pace.next_fit(3, 40) == 23 and pace.next_fit(23, 40) is None
    assert pace.next_fit(193, 257) is None
    # the clock of a run: 1 s a step, a validation of 30 s at step 10 (not in the pace but
    # reserved for the four still due), 944 s left at step 26
    clock = pace.Pace(ends=1000.0, minutes=10, start_step=0, validation_factor=2.0)
    fits = {done: clock.refit(done, 257, now=done + (30.0 if done >= 10 else 0.0),
                              paused=30.0 if done == 10 else 0.0) for done in range(1, 27)}
    assert [done for done, fit in fits.items() if fit] == [26]
    assert fits[26] == (850, ("the steps run faster than planned (1 s a step over the last "
                              "23 steps): 850 steps instead of 257 to end in the 10 minutes"))
    # what follows the last step (the threshold's fit: 40 steps' worth) keeps its time too
    late = pace.Pace(ends=1000.0, minutes=10, start_step=0, validation_factor=2.0, after=40.0)
    fits = {done: late.refit(done, 257, now=done + (30.0 if done >= 10 else 0.0),
                             paused=30.0 if done == 10 else 0.0) for done in range(1, 27)}
    assert fits[26][0] == 810


def test_the_threshold_fit_keeps_its_time_in_a_fitted_run():
    """The fit after the last step is reserved in the minutes (calibration and pace): its
    pixels (the validation fold's, else all, capped) through forward passes; none unasked."""
    from types import SimpleNamespace

    from napari_unet.engine.training import pace, threshold

    dataset = _tiny_dataset()
    config = plan_run(fingerprint(dataset)).config(batch_size=2, patch_size=[32, 32])
    pixels = sum(float(np.prod(mask.shape)) for mask in dataset.masks)
    one = pace.FORWARD_SHARE * 1.5 / (2 * 32 * 32)  # of a step, per pixel
    fitting = config.replace(fit_threshold=True)
    assert pace.threshold_fit_seconds(fitting, dataset, 2.0) == pytest.approx(2.0 * one * pixels)
    assert pace.threshold_fit_seconds(fitting.replace(fold=0, folds=4), dataset, 2.0) == \
        pytest.approx(2.0 * one * pixels / 4)
    assert pace.threshold_fit_seconds(config.replace(fit_threshold=False), dataset, 2.0) == 0
    large = SimpleNamespace(masks=[np.zeros((6000, 6000), np.uint8)])  # 36 M pixels: capped
    assert pace.threshold_fit_seconds(fitting, large, 1.0) == \
        pytest.approx(one * threshold.FIT_PIXELS)


def _paced_run(tmp_path, monkeypatch, stop_at_refit=False):
    """A tiny run whose 40 steps were fitted to 1 minute from a timing of 1 s a step that
    took 10 s; then, on a fake clock, each step takes 0.5 s and each validation 2 s. Its
    events, the fake clock at its end and the end its steps were fitted to."""
    from types import SimpleNamespace

    from napari_unet.engine import Progress, Validation, time_limit
    from napari_unet.engine.training import loop, pace

    dataset = _tiny_dataset()
    config = pace.with_steps(plan_run(fingerprint(dataset)).config(
        minutes=1.0, amp="off", device="cpu", batch_size=2, patch_size=[32, 32], fold=0,
        folds=2, model_options={"padding": "same", "base_channels": 4, "depth": 2,
                                "norm": "batch", "dropout": 0.0}), 40)
    started, clock = 1000.0, [1010.0]
    monkeypatch.setattr(loop, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    events = []
    run = train(config, dataset, run_dir=tmp_path / "run", deadline=time_limit(config, started))
    for event in run:
        events.append(event)
        clock[0] += 0.5 if isinstance(event, Progress) else 2.0 if isinstance(
            event, Validation) else 0.0
        if stop_at_refit and getattr(event, "level", None) == "info":
            run.close()  # cancelled: a checkpoint of the steps done
            break
    return config, events, clock[0], pace.fitted_end(config, time_limit(config, started))


def test_a_timed_run_follows_its_own_pace_to_the_end_of_its_minutes(tmp_path, monkeypatch):
    """Issue 36: a --minutes 10 run timed while the machine was busier ended after 5.6
    minutes with 257 steps, where ~450 fitted: its steps now follow its pace."""
    from napari_unet.cli_progress import HumanPrinter
    from napari_unet.engine import Message, Progress, TrainConfig, Validation, load_checkpoint
    from napari_unet.engine.training.setup import lr_factor

    config, events, now, end = _paced_run(tmp_path, monkeypatch)
    [note] = [e for e in events if isinstance(e, Message) and e.level == "info"]
    progress = [e for e in events if isinstance(e, Progress)]
    at = events.index(note)
    refit = progress[-1].total
    # 0.5 s a step at step 23, 31.5 s left, 3 validations of 2 s due: 74 steps in all
    assert refit == 74 and note.text == ("the steps run faster than planned (0.5 s a step over "
                                         "the last 20 steps): 74 steps instead of 40 to end in "
                                         "the 1 minute")
    assert {e.total for e in events[:at] if isinstance(e, Progress)} == {40}
    assert {e.total for e in events[at:] if isinstance(e, Progress)} == {74}
    assert isinstance(events[-1], Finished) and events[-1].step == 74
    assert end - 0.5 <= now <= end + 2.0  # it ends when its steps were fitted to end
    # the schedule follows: still going at step 40, at its end at the last step; the warm-up
    # and the periods (four validations) as a fitted run of 74 steps
    saved = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert (saved.steps, saved.val_every, saved.warmup_steps) == (74, 19, config.warmup_steps)
    assert load_checkpoint(tmp_path / "run").config.steps == 74
    assert progress[39].lr > 0.1 * config.lr
    assert progress[-1].lr == pytest.approx(config.lr * lr_factor(saved, 74)) == 0.0
    assert [e.step for e in events if isinstance(e, Validation)] == [10, 20, 38, 57, 74]
    # the CLI says why and keeps its bar, its end moved
    show, bars = HumanPrinter(), []
    for event in events:
        show(event)
        if isinstance(event, Progress) and event.step < event.total:
            bars.append(show.bar)
    assert all(bar is bars[0] for bar in bars)


def test_a_resumed_run_keeps_its_refitted_steps(tmp_path, monkeypatch):
    from napari_unet.engine import Progress, Started, TrainConfig

    _, events, _, _ = _paced_run(tmp_path, monkeypatch, stop_at_refit=True)
    assert events[-1].level == "info" and events[-2].step == 23
    saved = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")  # what --resume reads
    assert saved.steps == 74
    resumed = list(train(saved, _tiny_dataset(), run_dir=tmp_path / "run", resume=True))
    assert isinstance(resumed[0], Started) and \
        (resumed[0].start_step, resumed[0].total_steps) == (23, 74)
    assert resumed[-1].step == 74
    assert [e for e in resumed if isinstance(e, Progress)][-1].lr == 0.0


def test_the_cli_plans_by_default_and_prints_why(tmp_path):
    done = cli("train", "--sample", "dagm", "--steps", "2", "--patch-size", "64",
               "--base-channels", "8", "--amp", "off", "--device", "cpu", "--out",
               tmp_path / "run", "--events", "jsonl")
    assert done.returncode == 0, done.stderr[-2000:]
    events = [from_json(line) for line in done.stdout.splitlines()]
    assert isinstance(events[0], Planned) and isinstance(events[1], Started)
    text = planned_text(events[0])  # what the CLI prints and the Train widget shows
    assert "plan, from the data" in text and "patch_size = 64x64: given by the user" in text
    assert "model = unet: 2D data" in text and events[0].steps == 0  # --steps given
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["preset"] == "auto" and saved["steps"] == 2
    assert saved["model"] == "unet" and saved["model_options"]["base_channels"] == 8
    assert saved["plan"]["patch_size"] == "given by the user"
    assert "fits the median image" not in saved["plan"]["patch_size"]


@pytest.mark.parametrize("flags, message", [
    (["--minutes", "0"], "minutes must be above 0"),
    (["--minutes", "0.05"], "--minutes 0.05 (3 s) is too short to plan"),  # issue 32
    (["--nproc", "2"], "--nproc 2 needs --steps"),
])
def test_bad_time_budgets_are_one_line_errors(tmp_path, flags, message):
    done = cli("train", "--sample", "dagm", "--out", tmp_path / "run", *flags)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_instance_maps_in_files_become_foreground_in_every_mask_of_the_set(tmp_path):
    import tifffile

    from napari_unet.engine import load_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    few = np.zeros((40, 40), np.uint16)
    few[2:6, 2:6], few[10:14, 10:14] = 1, 2  # two objects: alone, it would read as 2 classes
    many = np.zeros((40, 40), np.uint16)
    for k in range(30):  # 30 objects, ids up to 300: instances
        many[k, :] = 10 * (k + 1)
    for name, mask in (("a", few), ("b", many)):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", np.zeros((40, 40), np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", mask)
    dataset = load_dataset(tmp_path, spatial_dims="auto")
    assert dataset.num_classes == 2
    assert [int(m.max()) for m in dataset.masks] == [1, 1]
    assert int(dataset.masks[0].sum()) == 32 and int(dataset.masks[1].sum()) == 30 * 40


def _write(path, array):
    import imageio.v3 as iio
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        iio.imwrite(path, array)
    else:
        tifffile.imwrite(path, array, **({"metadata": {"spacing": [2.0, 0.5, 0.5]}}
                                         if array.ndim == 3 and "aniso" in path.name else {}))


def _kind(kind, rng):
    """(images, masks) of one kind a user brings, as files are."""
    blob = np.zeros((36, 44), np.uint8)
    blob[8:20, 10:30] = 1
    if kind == "rgb png, 0/255 masks":
        return [rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)] * 2, [blob * 255] * 2
    if kind == "rgba png, mixed sizes, one smaller than a patch":
        small = np.zeros((20, 24), np.uint8)
        small[4:10, 4:12] = 1
        return [rng.integers(0, 255, (36, 44, 4), dtype=np.uint8),
                rng.integers(0, 255, (20, 24, 4), dtype=np.uint8)], [blob, small]
    if kind == "uint16, class values 0/1/2":
        classes = blob.copy()
        classes[25:30, 5:15] = 2
        return [rng.integers(0, 4000, (36, 44), dtype=np.uint16)] * 2, [classes] * 2
    if kind == "float32, instance map":
        instances = np.zeros((36, 44), np.uint16)
        for k in range(20):
            instances[k + 8, 2 * k:2 * k + 2] = k + 1
        return [rng.random((36, 44), dtype=np.float32)] * 2, [instances] * 2
    if kind == "3-channel tif":
        return [rng.integers(0, 255, (3, 36, 44), dtype=np.uint8)] * 2, [blob] * 2
    volume = np.zeros((16, 32, 32), np.uint8)
    volume[4:12, 8:20, 8:20] = 1
    return [rng.integers(0, 255, (16, 32, 32), dtype=np.uint8)], [volume]  # anisotropic 3D


KINDS = ["rgb png, 0/255 masks", "rgba png, mixed sizes, one smaller than a patch",
         "uint16, class values 0/1/2", "float32, instance map", "3-channel tif",
         "anisotropic 3D stack"]


@pytest.mark.parametrize("kind", KINDS)
def test_whatever_a_user_brings_is_planned_trained_and_predicted(kind, tmp_path):
    from napari_unet.engine import load_checkpoint, load_dataset, plan_for_data, predict_array

    images, masks = _kind(kind, np.random.default_rng(0))
    png = "png" in kind
    for k, (image, mask) in enumerate(zip(images, masks)):
        stem = f"aniso{k}" if "3D" in kind else f"i{k}"
        _write(tmp_path / "data" / "images" / f"{stem}.{'png' if png else 'tif'}", image)
        _write(tmp_path / "data" / "masks" / f"{stem}.{'png' if png else 'tif'}", mask)
    dataset = load_dataset(tmp_path / "data", spatial_dims="auto")
    plan = plan_for_data(dataset, "cpu")
    assert plan.values["spatial_dims"] == (3 if "3D" in kind else 2)
    if "3D" in kind:  # spacing from the TIF: a coarse Z
        assert plan.fingerprint.anisotropy == 4.0 and plan.values["flip_all_axes"] is False
    narrow = dict(plan.values["model_options"], base_channels=4)
    config = plan.config(steps=2, amp="off", device="cpu", model_options=narrow)
    events = list(train(config, dataset, run_dir=tmp_path / "run"))
    assert isinstance(events[-1], Finished) and np.isfinite(events[-1].step)
    checkpoint = load_checkpoint(tmp_path / "run")
    image = images[-1]
    _, labels = predict_array(checkpoint, image, amp="off", device="cpu")
    spatial = image.shape[:2] if png else image.shape[-dataset.spatial_dims:]
    assert labels.shape == tuple(spatial)
    assert int(labels.max()) < max(2, dataset.num_classes)


def test_a_small_data_set_gets_no_batch_bigger_than_itself():
    plan = plan_run(_fp(samples=1, smallest_size=(64, 64), median_size=(64, 64),
                        largest_size=(64, 64)))
    assert plan.values["patch_size"] == [64, 64] and plan.values["batch_size"] == 2
    assert "twice the data" in plan.reasons["batch_size"]


def test_a_live_run_plans_small_windows_a_narrow_network_and_a_constant_rate():
    """Issue 34: `train --live` and the widget's Live plan for many steps a second."""
    batch, live = plan_run(_fp()), plan_run(_fp(), live=True)
    v = live.values
    assert v["patch_size"] == [128, 128] and v["batch_size"] <= 4
    assert v["model_options"]["base_channels"] == 8 and v["model_options"]["depth"] == 5
    assert v["lr_schedule"] == "constant" and v["lr"] > batch.values["lr"]
    assert 0 < v["warmup_steps"] <= 20
    assert all("live run" in live.reasons[name] for name in
               ("patch_size", "batch_size", "model_options", "lr", "lr_schedule"))
    # the batch plan is as it was; a smaller image keeps its own smaller window
    assert batch.values["patch_size"] == [256, 256] and batch.values["lr_schedule"] == "cosine"
    small = plan_run(_fp(smallest_size=(64, 64), median_size=(64, 64), largest_size=(64, 64)),
                     live=True)
    assert small.values["patch_size"] == [64, 64]
    assert small.values["model_options"]["depth"] == 4  # 3 poolings: 64 -> 8 at the bottom
    assert plan_run(_3d(), live=True).values["patch_size"] == [48, 48, 48]
