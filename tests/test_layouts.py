"""The input-layout rule (napari_unet.layouts), as a table: shape + hints + model -> what each
axis is and the engine's channel-first shape; the errors; the reader's and the widgets' side."""
import numpy as np
import pytest

from napari_unet.errors import ConfigError, DataError
from napari_unet.layouts import (
    channel_first,
    channels_of,
    file_channels,
    guess_spatial_dims,
    interpret,
    layer_axes,
    looks_like_volume,
    spatial_shape,
    writes_as_rgb,
)

# (shape, hints, spatial_dims, in_channels) -> (kind, channel axis, rgb, channel-first shape)
# hints: axes (tifffile letters), rgb (napari's flag), stack (a 2D model may take a stack)
TABLE = {
    "(Y,X)": ((20, 30), {}, 2, None, ("image", None, False, (1, 20, 30))),
    "(Y,X,3) RGB": ((20, 30, 3), {}, 2, 3, ("image", 2, True, (3, 20, 30))),
    "(Y,X,4) RGBA, alpha dropped": ((20, 30, 4), {}, 2, 3, ("image", 2, True, (3, 20, 30))),
    "(Y,X,2) channels last": ((20, 30, 2), {}, 2, None, ("image", 2, False, (2, 20, 30))),
    "(C,Y,X) C=2": ((2, 20, 30), {}, 2, None, ("image", 0, False, (2, 20, 30))),
    "(C,Y,X) C=2 a model of 2 channels": ((2, 20, 30), {"stack": True}, 2, 2,
                                          ("image", 0, False, (2, 20, 30))),
    "(Z,Y,X) stack under 2D": ((9, 20, 30), {"stack": True}, 2, 1,
                               ("stack", None, False, (1, 9, 20, 30))),
    "(Z,Y,X) in memory under 2D": ((9, 20, 30), {"stack": True}, 2, None,
                                   ("stack", None, False, (1, 9, 20, 30))),
    "(Z,Y,X) volume under 3D": ((9, 20, 30), {}, 3, 1, ("volume", None, False, (1, 9, 20, 30))),
    "(C,Z,Y,X)": ((4, 9, 20, 30), {}, 3, 4, ("volume", 0, False, (4, 9, 20, 30))),
    "(Z,Y,X,C<=4)": ((9, 20, 30, 2), {}, 3, 2, ("volume", 3, False, (2, 9, 20, 30))),
    "(Z,Y,X,3) under 3D is not RGB": ((9, 20, 30, 3), {}, 3, 3,
                                      ("volume", 3, False, (3, 9, 20, 30))),
    "(Z,C,Y,X) under 2D, in_channels=C": ((9, 2, 20, 30), {"stack": True}, 2, 2,
                                          ("stack", 1, False, (2, 9, 20, 30))),
    "(Z,1,Y,X) under 2D, in_channels=1": ((9, 1, 20, 30), {"stack": True}, 2, 1,
                                          ("stack", 1, False, (1, 9, 20, 30))),
    "(Z,Y,X) of 3 pages, a 3-channel model": ((3, 20, 30), {"stack": True}, 2, 3,
                                              ("image", 0, False, (3, 20, 30))),
    "axes CYX": ((2, 20, 30), {"axes": "CYX"}, 2, 2, ("image", 0, False, (2, 20, 30))),
    "axes ZCYX under 3D": ((9, 2, 20, 30), {"axes": "ZCYX"}, 3, 2,
                           ("volume", 1, False, (2, 9, 20, 30))),
    "axes ZCYX under 2D": ((9, 2, 20, 30), {"axes": "ZCYX", "stack": True}, 2, 2,
                           ("stack", 1, False, (2, 9, 20, 30))),
    "axes YXS": ((20, 30, 3), {"axes": "YXS"}, 2, 3, ("image", 2, True, (3, 20, 30))),
    "axes QQYX (unnamed 4D) under 3D": ((2, 9, 20, 30), {"axes": "QQYX"}, 3, 2,
                                        ("volume", 0, False, (2, 9, 20, 30))),
    "a channel group CZYX under 2D": ((2, 9, 20, 30), {"axes": "CZYX", "stack": True}, 2, 2,
                                      ("stack", 0, False, (2, 9, 20, 30))),
    "a channel group CZYX under 3D": ((2, 9, 20, 30), {"axes": "CZYX"}, 3, 2,
                                      ("volume", 0, False, (2, 9, 20, 30))),
    "a grey (Z,Y,X) layer of 3 slices is a stack": ((3, 20, 30), {"axes": "ZYX", "stack": True},
                                                    2, None, ("stack", None, False,
                                                              (1, 3, 20, 30))),
    "napari rgb flag, a tiny (4,4,3) picture": ((4, 4, 3), {"rgb": True}, 2, 3,
                                                ("image", 2, True, (3, 4, 4))),
    "napari rgb flag over a stack": ((9, 20, 30, 3), {"rgb": True, "stack": True}, 2, 3,
                                     ("stack", 3, True, (3, 9, 20, 30))),
}


@pytest.mark.parametrize("row", TABLE, ids=list(TABLE))
def test_the_rule_reads_each_layout(row):
    shape, hints, dims, in_channels, (kind, channel_axis, rgb, expected) = TABLE[row]
    layout = interpret(shape, dims, in_channels, **hints)
    assert (layout.kind, layout.channel_axis, layout.rgb) == (kind, channel_axis, rgb)
    assert layout.channel_first_shape == expected
    image = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    view = channel_first(image, dims, in_channels, **hints)
    assert view.shape == expected and view.dtype == np.int16
    assert np.shares_memory(view, image)  # a view: memory maps stay lazy


def test_the_channel_first_view_keeps_the_pixels():
    zcyx = np.arange(3 * 2 * 4 * 5).reshape(3, 2, 4, 5)
    np.testing.assert_array_equal(channel_first(zcyx, 2, 2, stack=True), zcyx.transpose(1, 0, 2, 3))
    rgba = np.arange(4 * 5 * 4).reshape(4 * 5, 1, 4)[:, 0].reshape(4, 5, 4)
    np.testing.assert_array_equal(channel_first(rgba, 2, 3, rgb=True), rgba[..., :3].transpose(2, 0, 1))
    assert channel_first(np.ones((5, 6), bool), 2).dtype == np.uint8


# (shape, hints, spatial_dims, in_channels) -> words the one-line message must hold
ERRORS = {
    "too many channels": ((40, 20, 30), {}, 2, None, r"40 channels, more than 16.*spatial_dims=3"),
    "too many channels in 3D": ((40, 9, 20, 30), {}, 3, None, r"40 channels.*split the extra"),
    "a 2D image under a 3D model": ((20, 30), {}, 3, None, r"not a 3D image.*spatial_dims=2"),
    "a volume with channels under 2D": ((2, 9, 20, 30), {}, 2, None,
                                        r"not a 2D image.*spatial_dims=3"),
    "five axes": ((5, 40, 20, 30, 2), {}, 3, None, r"split the extra axes.*spatial_dims=3"),
    "a stack where one sample is wanted": ((9, 20, 30), {"axes": "ZYX"}, 2, None,
                                           r"\(axes ZYX\) is not a 2D image"),
    "wrong channel count": ((20, 30, 3), {}, 2, 1, r"3 channel\(s\) but the model expects 1"),
    "a grey stack for an RGB model": ((9, 20, 30), {"stack": True}, 2, 3,
                                      r"1 channel\(s\) but the model expects 3"),
    "a channel group of the wrong size": ((2, 9, 20, 30), {"axes": "CZYX", "stack": True}, 2, 4,
                                          r"2 channel\(s\) but the model expects 4"),
}


@pytest.mark.parametrize("row", ERRORS, ids=list(ERRORS))
def test_what_the_rule_cannot_read_is_a_one_line_data_error(row):
    shape, hints, dims, in_channels, words = ERRORS[row]
    with pytest.raises(DataError, match=words) as info:
        interpret(shape, dims, in_channels, **hints)
    assert "\n" not in str(info.value) and ": " in str(info.value)  # what, then what to do


def test_other_errors():
    with pytest.raises(ConfigError, match="spatial_dims must be 2 or 3"):
        interpret((20, 30), 4)
    with pytest.raises(DataError, match="not supported"):
        channel_first(np.array([["a"]]), 2)


@pytest.mark.parametrize("shape, volume", [
    ((16, 64, 64), True),      # 16 deep: a volume
    ((15, 64, 64), False),     # 15 deep: a stack of 2D images
    ((16, 64, 65), True),      # 16 * 4 = 64 >= min(64, 65)
    ((16, 65, 80), False),     # thin: 16 slices of wide pictures
    ((256, 1024, 1024), True),  # 256 * 4 = 1024
    ((30, 1024, 1024), False),  # 30 * 4 < 1024: a thin stack
    ((64, 64), False),
    ((16, 64, 64, 2), False),  # not one 3D layer
])
def test_looks_like_volume_boundaries(shape, volume):
    assert looks_like_volume(shape) is volume
    assert guess_spatial_dims(shape) == (3 if volume else 2)


# the reader: (axes, shape) -> (rgb, channel axis to split into layers)
@pytest.mark.parametrize("axes, shape, expected", [
    ("YX", (20, 30), (False, None)),
    ("YXS", (20, 30, 3), (True, None)),
    ("YXS", (20, 30, 4), (True, None)),
    ("CYX", (2, 20, 30), (False, 0)),
    ("ZCYX", (9, 2, 20, 30), (False, 1)),
    ("CZYX", (1, 9, 20, 30), (False, None)),   # one channel: one layer
    ("CYX", (17, 20, 30), (False, None)),      # more than MAX_CHANNELS: one layer
    ("QQYX", (2, 9, 20, 30), (False, 0)),      # unnamed 4D: CZYX
    ("QQYX", (20, 9, 20, 30), (False, None)),
    ("QYX", (9, 20, 30), (False, None)),
])
def test_the_reader_asks_the_rule(axes, shape, expected):
    assert file_channels(axes, shape) == expected


def test_the_layer_side_of_the_rule():
    assert layer_axes(2) == "YX" and layer_axes(3) == "ZYX"
    assert layer_axes(3, rgb=True) == "YXS" and layer_axes(4, channels_first=True) == "CZYX"
    assert spatial_shape((9, 20, 30, 3), "ZYXS") == (9, 20, 30)
    assert spatial_shape((2, 9, 20, 30), "CZYX") == (9, 20, 30)
    assert channels_of((20, 30, 4), "YXS") == 3 and channels_of((4, 9, 8, 8), "CZYX") == 4
    assert channels_of((9, 8, 8), "ZYX") == 1
    assert writes_as_rgb((20, 30, 3), np.uint8) and writes_as_rgb((20, 30, 4), np.uint8)
    assert not writes_as_rgb((20, 30, 3), np.uint16) and not writes_as_rgb((3, 20, 30), np.uint8)


def test_a_channel_group_under_a_2d_model_is_a_stack_of_channel_images():
    """(C, Z, Y, X) channels of one image: each Z slice is one (C, Y, X) image; written
    slice by slice as (Z, C, Y, X), predicted as the engine's (C, Z, Y, X)."""
    group = np.arange(2 * 5 * 4 * 4).reshape(2, 5, 4, 4)
    layout = interpret(group.shape, 2, axes="CZYX", stack=True)
    pages = layout.stack_first(group)
    assert pages.shape == (5, 2, 4, 4)
    np.testing.assert_array_equal(pages[3], group[:, 3])
    assert layout.channel_first(group) is not None and layout.channel_first_shape == (2, 5, 4, 4)
    plain = np.zeros((5, 4, 4))
    assert interpret(plain.shape, 2, axes="ZYX", stack=True).stack_first(plain) is plain
    assert interpret(group.shape, 3, axes="CZYX").stack_first(group) is group
