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


# -- options declared once (napari_unet/options.py) -----------------------------------------------
def test_the_config_is_made_from_the_option_rows():
    import dataclasses

    from napari_unet.options import TRAIN_OPTIONS

    fields = dataclasses.fields(TrainConfig)
    assert [f.name for f in fields] == [o.name for o in TRAIN_OPTIONS]
    config = TrainConfig()
    assert all(getattr(config, o.name) == o.default for o in TRAIN_OPTIONS)
    assert config.rot90 is not TrainConfig().rot90  # list defaults are not shared
    for option in TRAIN_OPTIONS:
        if option.choices:
            with pytest.raises(ConfigError, match=f"{option.name} must be one of"):
                TrainConfig(**{option.name: "no such choice"})
        if option.at_least is not None:
            with pytest.raises(ConfigError, match=f"{option.name} must be at least"):
                TrainConfig(**{option.name: option.at_least - 1})


def test_presets_say_what_their_network_sees():
    from napari_unet.choices import preset_network

    for name in PRESETS:
        in_channels, classes = preset_network(name)
        assert in_channels >= 1 and classes >= 2
    assert preset_network("brats")[0] == 4 and preset_config("brats").regions


NEW_OPTION = """
import dataclasses, sys
from napari_unet import options
row = options.Option("label_smoothing", float, 0.0, "soften the targets", flag=True,
                     form=options.Form("Label smoothing", 0, 1, step=0.05))
options.TRAIN_OPTIONS += (row,)
options.OPTIONS[row.name] = row
options.FLAGGED += (row,)
options.SHOWN += (row,)
from napari_unet.cli import build_parser
from napari_unet.cli_commands import train_config
from napari_unet.engine import TrainConfig
args = build_parser().parse_args(["train", "--preset", "isbi2012", "--sample", "em", "--out",
                                  "r", "--label-smoothing", "0.1"])
config = train_config(args)
assert TrainConfig().label_smoothing == 0.0 and config.label_smoothing == 0.1
assert TrainConfig.from_yaml(config.to_yaml()) == config
assert options.option_args(row, 0.25, 2) == ["--label-smoothing", "0.25"]
print("ok")
"""


def test_a_new_option_is_one_row():
    """A row added to the table is a config field, a CLI flag and a Train widget argument."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", NEW_OPTION], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
