"""The networks: published sizes, shapes, gradients, bf16, state_dict round trip, errors.

Small widths and inputs everywhere but the parameter counts, so the file runs in seconds on
a CPU. Output shapes do not depend on the widths, so a 2-channel UNet checks 572 -> 388.
"""
import io

import pytest
import torch
import torch.nn.functional as F

from napari_unet.errors import ConfigError, DataError, InputSizeError
from napari_unet.models import available_models, build_model, model_options
from napari_unet.models.blocks import ConvBlock, upsample_layer

# name, options, input spatial size: small and fast, one per family and variant.
SMALL = {
    "unet": ("unet", dict(base_channels=4, depth=3), (44, 44)),
    "unet_same_batchnorm": ("unet", dict(base_channels=4, depth=3, padding="same",
                                         norm="batch"), (32, 24)),
    "unet_same_instancenorm": ("unet", dict(base_channels=4, depth=3, padding="same",
                                            norm="instance"), (16, 16)),
    "tiny_unet": ("tiny_unet", dict(base_channels=4), (32, 48)),
    "tiny_unet_transpose": ("tiny_unet", dict(base_channels=4, upsample="transpose"), (32, 32)),
    "unet3d": ("unet3d", dict(base_channels=4, max_channels=16, depth=4), (16, 16, 16)),
    "unet3d_2d": ("unet3d", dict(base_channels=4, max_channels=16, depth=4, spatial_dims=2),
                  (32, 16)),
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def small(key):
    name, options, size = SMALL[key]
    torch.manual_seed(0)
    model = build_model(name, **options)
    x = torch.randn(2, model.in_channels, *size)
    return model, x


# -- published sizes -----------------------------------------------------------------------

def test_unet_has_the_papers_31_03_million_parameters_and_572_to_388():
    model = build_model("unet")
    assert n_params(model) == 31_030_658
    assert round(n_params(model) / 1e6, 2) == 31.03
    assert model.output_size((572, 572)) == (388, 388)
    assert (model.in_channels, model.num_classes, model.spatial_dims) == (1, 2, 2)


def test_unet_572_input_gives_388_output():
    model = build_model("unet", base_channels=2).eval()  # shapes do not depend on widths
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_padded_unet_keeps_the_size():
    model = build_model("unet", base_channels=2, padding="same").eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 48, 80))
    assert out.shape == (1, 2, 48, 80)
    assert model.output_size((48, 80)) == (48, 80)
    assert n_params(build_model("unet", padding="same")) == 31_030_658  # padding adds none


# NVIDIA's TinyUNet layer by layer (model/unet.py + blocks/ of UNet_Industrial), as
# (in, out, kernel) with bias: input block, three down blocks, bottleneck (two convs and
# the 2x2 up-conv to 128), three upsample blocks (concat, conv f, conv f/2, 2x2 up-conv
# f/2), output block (concat, two convs, 1x1). Its source comment says 1,824,945; its
# layers add up to 1,850,305, which is what both upsampling variants have.
NVIDIA_TINY_UNET = [
    (1, 32, 3), (32, 32, 3), (32, 32, 3), (32, 32, 3), (32, 64, 3), (64, 64, 3),
    (64, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 128, 2),
    (256, 128, 3), (128, 64, 3), (64, 64, 2), (128, 64, 3), (64, 32, 3), (32, 32, 2),
    (64, 32, 3), (32, 16, 3), (16, 16, 2), (48, 32, 3), (32, 32, 3), (32, 1, 1),
]


@pytest.mark.parametrize("upsample", ["transpose", "upsample_conv"])
def test_tiny_unet_has_nvidias_parameter_count(upsample):
    expected = sum(cin * cout * k * k + cout for cin, cout, k in NVIDIA_TINY_UNET)
    assert expected == 1_850_305
    model = build_model("tiny_unet", upsample=upsample)
    assert n_params(model) == expected
    assert (model.in_channels, model.num_classes, model.spatial_dims) == (1, 1, 2)


@pytest.mark.parametrize("upsample", ["transpose", "upsample_conv"])
def test_tiny_unet_keeps_the_size(upsample):
    model = build_model("tiny_unet", base_channels=4, upsample=upsample).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 64, 48))
    assert out.shape == (1, 1, 64, 48)


def test_unet3d_widths_and_size():
    model = build_model("unet3d")
    assert (model.in_channels, model.num_classes, model.spatial_dims) == (4, 4, 3)
    widths = [block.conv1.out_channels for block in model.encoder]
    assert widths + [model.bottleneck.conv1.out_channels] == [32, 64, 128, 256, 320, 320]
    assert n_params(model) == 31_192_868  # a regression pin, not a published figure
    small_model = build_model("unet3d", base_channels=2, max_channels=8).eval()  # 6 levels
    with torch.no_grad():
        out = small_model(torch.zeros(1, 4, 64, 64, 64))
    assert out.shape == (1, 4, 64, 64, 64)


def test_unet3d_goes_down_with_strided_convs_and_instance_norm():
    model = build_model("unet3d", base_channels=4, max_channels=16, depth=4)
    strides = [block.conv1.stride for block in model.encoder] + [model.bottleneck.conv1.stride]
    assert strides == [(1, 1, 1)] + [(2, 2, 2)] * 3
    assert isinstance(model.encoder[0].norm1, torch.nn.InstanceNorm3d)
    assert model.encoder[0].norm1.affine
    assert isinstance(model.encoder[0].act1, torch.nn.LeakyReLU)
    assert model.encoder[0].conv1.bias is None  # the norm's shift replaces it
    assert all(isinstance(up[0], torch.nn.ConvTranspose3d) for up in model.ups)


def test_blocks_take_the_dimension_as_a_parameter():
    block3d = ConvBlock(3, 2, 4, padding="same", norm="batch")
    assert block3d(torch.zeros(1, 2, 4, 6, 8)).shape == (1, 4, 4, 6, 8)
    up = upsample_layer(3, 4, 2, "upsample_conv")
    assert up(torch.zeros(1, 4, 2, 3, 4)).shape == (1, 2, 4, 6, 8)
    assert ConvBlock(2, 1, 3, padding="valid")(torch.zeros(1, 1, 9, 9)).shape == (1, 3, 5, 5)


# -- every small model: gradients, bf16, state_dict, hparams ---------------------------------

@pytest.mark.parametrize("key", list(SMALL))
def test_output_shape_matches_output_size(key):
    model, x = small(key)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (2, model.num_classes, *model.output_size(tuple(x.shape[2:])))


@pytest.mark.parametrize("key", list(SMALL))
def test_gradients_reach_every_parameter(key):
    model, x = small(key)
    out = model.train()(x)
    # Against a random target: a plain sum would have zero gradient through a norm.
    F.mse_loss(out, torch.randn_like(out)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("key", list(SMALL))
def test_bf16_autocast_forward_on_cpu(key):
    model, x = small(key)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    with torch.no_grad():
        reference = model(x)
    assert out.shape == reference.shape


@pytest.mark.parametrize("key", list(SMALL))
def test_state_dict_round_trip_gives_identical_outputs(key):
    model, x = small(key)
    buffer = io.BytesIO()
    torch.save({"hparams": model.hparams, "state": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    hparams = dict(saved["hparams"])
    torch.manual_seed(1)  # a different initialisation, overwritten by the load
    rebuilt = build_model(hparams.pop("name"), **hparams)
    rebuilt.load_state_dict(saved["state"])
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt.eval()(x))


@pytest.mark.parametrize("name", ["unet", "tiny_unet", "unet3d"])
def test_hparams_name_every_option(name):
    model = build_model(name, base_channels=4) if name != "unet3d" else build_model(
        name, base_channels=4, max_channels=8, depth=3)
    assert set(model.hparams) == {"name"} | set(model_options(name))
    assert model.hparams["name"] == name and model.hparams["base_channels"] == 4
    assert type(build_model(**model.hparams)) is type(model)


# -- sizes -----------------------------------------------------------------------------------

def test_invalid_unet_size_names_the_nearest_valid_sizes():
    model = build_model("unet", base_channels=2)
    with pytest.raises(InputSizeError) as error:
        model.output_size((570, 570))
    assert str(error.value) == ("input 570x570 is not valid for the unpadded UNet: "
                                "use 556 or 572 (output 372 or 388)")
    with pytest.raises(InputSizeError, match="556 or 572"):
        model(torch.zeros(1, 1, 570, 570))
    assert model.valid_input_size(570) == (572, 572)
    assert model.valid_input_size([557, 572]) == (572, 572)
    with pytest.raises(InputSizeError, match=r"use 188 \(output 4\)"):
        model.output_size(100)  # too small: only a size above exists


@pytest.mark.parametrize("name, options, bad, message", [
    ("unet", dict(padding="same"), (100, 96), "use 96 or 112 (sizes must be multiples of 16)"),
    ("tiny_unet", {}, (60, 64), "use 48 or 64 (sizes must be multiples of 16)"),
    ("unet3d", {}, (100, 128, 64), "use 96 or 128 (sizes must be multiples of 32, at least 64)"),
    ("unet3d", {}, (32, 64, 64), "use 64 (sizes must be multiples of 32, at least 64)"),
])
def test_invalid_padded_sizes_name_valid_sizes(name, options, bad, message):
    model = build_model(name, base_channels=2, **options)
    with pytest.raises(InputSizeError) as error:
        model.output_size(bad)
    assert str(error.value).endswith(message)
    assert "\n" not in str(error.value)


def test_valid_input_size_is_the_smallest_valid_size_not_below():
    assert build_model("tiny_unet", base_channels=2).valid_input_size((500, 512)) == (512, 512)
    assert build_model("unet3d", base_channels=2).valid_input_size((1, 65, 128)) == (64, 96, 128)


def test_wrong_input_shape_or_channels_is_a_data_error():
    model = build_model("tiny_unet", base_channels=2)
    with pytest.raises(DataError, match="in_channels=3"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(DataError):
        model(torch.zeros(1, 32, 32))
    with pytest.raises(InputSizeError, match="give 2 sizes"):
        model.output_size((32, 32, 32))


# -- registry --------------------------------------------------------------------------------

def test_registry_lists_the_three_models():
    assert available_models() == ["unet", "tiny_unet", "unet3d"]


def test_unknown_model_names_the_choices():
    with pytest.raises(ConfigError) as error:
        build_model("resnet")
    assert str(error.value) == "unknown model 'resnet': choose one of unet, tiny_unet, unet3d"


def test_unknown_option_names_the_valid_options():
    with pytest.raises(ConfigError) as error:
        build_model("tiny_unet", base_channel=16)
    assert str(error.value) == ("unknown option 'base_channel' for model 'tiny_unet': valid "
                                "options are in_channels, num_classes, base_channels, upsample")


@pytest.mark.parametrize("name, options, words", [
    ("unet", dict(padding="full"), ["'valid'", "'same'"]),
    ("unet", dict(norm="group"), ["'batch'", "'instance'", "None"]),
    ("unet", dict(depth=1), [">= 2"]),
    ("unet", dict(dropout=1.5), ["[0, 1)"]),
    ("tiny_unet", dict(upsample="bilinear"), ["'transpose'", "'upsample_conv'"]),
    ("tiny_unet", dict(base_channels=5), ["even"]),
    ("unet3d", dict(spatial_dims=1), ["2, 3"]),
    ("unet3d", dict(base_channels=0), [">= 1"]),
])
def test_invalid_option_values_are_config_errors(name, options, words):
    with pytest.raises(ConfigError) as error:
        build_model(name, **options)
    assert all(word in str(error.value) for word in words), str(error.value)
