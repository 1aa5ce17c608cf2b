"""Config dataclass, presets equal to SPEC.md's reference hyper-parameters, YAML round trip."""
import pytest

from napari_unet.engine.config import PRESETS, TrainConfig, preset_config
from napari_unet.errors import ConfigError


def test_industrial_preset_matches_spec():
    c = preset_config("industrial")
    assert c.model == "tiny_unet" and c.batch_size == 16 and c.steps == 2500
    assert c.optimizer == "rmsprop" and c.rmsprop_centered is True
    assert c.rmsprop_alpha == 0.9 and c.momentum == 0.8
    assert c.lr == 1e-4 and c.weight_decay == 1e-5
    assert (c.lr_schedule, c.lr_decay_rate, c.lr_decay_steps) == ("exponential_step", 0.8, 500)
    assert c.loss == "adaptive" and c.normalization == "minus_one_one"
    assert c.hflip == 0.5 and c.rot90 == [0, 1, 2]


def test_isbi_preset_matches_spec():
    c = preset_config("isbi2012")
    assert c.model == "unet" and c.model_options["padding"] == "valid"
    assert c.model_options["dropout"] == 0.5
    assert c.patch_size == [388, 388]  # the output window of a 572x572 input
    assert (c.optimizer, c.lr, c.weight_decay, c.batch_size, c.steps) == ("adam", 1e-4, 5e-4, 8, 6400)
    assert c.loss == "dice_ce" and c.normalization == "minus_one_one"
    assert c.hflip == 0.5 and c.vflip == 0.5 and c.brightness == 0.2 and c.crop_resize
    assert c.folds == 5


def test_volume3d_preset_matches_spec():
    c = preset_config("volume3d")
    assert c.model == "unet3d" and c.spatial_dims == 3 and c.patch_size == [128, 128, 128]
    assert (c.optimizer, c.lr, c.batch_size) == ("adam", 2e-4, 2)
    assert c.loss == "dice_ce_foreground" and c.foreground_oversample > 0


def test_yaml_round_trip_every_preset():
    for name in PRESETS:
        config = preset_config(name, steps=7, lr=3e-3)
        again = TrainConfig.from_yaml(config.to_yaml())
        assert again == config and again.steps == 7


def test_overrides_are_typed():
    assert preset_config("industrial", lr=1).lr == 1.0
    with pytest.raises(ConfigError, match="steps"):
        preset_config("industrial", steps="many")
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="amp must be one of"):
        preset_config("industrial", amp="fp8")
    with pytest.raises(ConfigError, match="fold 5 is out of range"):
        preset_config("isbi2012", fold=5)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("nope")


def test_config_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml(path)
