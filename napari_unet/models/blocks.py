"""Building blocks shared by the 2D and 3D networks.

The spatial dimension (2 or 3) is a parameter of every block, so one implementation serves
both. :class:`UNetSkeleton` holds what all three models share: the encoder/decoder forward
pass with skip connections, the public attributes of docs/CONTRACTS.md and the input-size
rules (``output_size``, ``valid_input_size`` and their one-line error messages).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, DataError, InputSizeError

PADDINGS = ("valid", "same")
NORMS = ("batch", "instance", None)
ACTIVATIONS = ("relu", "leaky_relu")
UPSAMPLINGS = ("transpose", "upsample_conv")


# -- option checks: raised when a model is built, with the valid choices in the message --------

def check_choice(option: str, value, choices: Sequence) -> None:
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{option}={value!r} is not valid: choose one of {shown}")


def check_int(option: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option}={value!r} is not valid: use a whole number >= {minimum}")


def check_fraction(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{option}={value!r} is not valid: use a number in [0, 1)")


def captured_options(local_vars: dict) -> dict:
    """A constructor's arguments, read from ``locals()`` before any other local exists.

    Taking them from the signature itself means ``hparams`` can never miss an option.
    """
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


# -- layers chosen by dimension ----------------------------------------------------------------

def _by_dims(dims: int, two, three):
    if dims not in (2, 3):
        raise ConfigError(f"spatial_dims={dims!r} is not valid: choose one of 2, 3")
    return two if dims == 2 else three


def conv_cls(dims: int) -> type[nn.Module]:
    return _by_dims(dims, nn.Conv2d, nn.Conv3d)


def transposed_conv_cls(dims: int) -> type[nn.Module]:
    return _by_dims(dims, nn.ConvTranspose2d, nn.ConvTranspose3d)


def max_pool_cls(dims: int) -> type[nn.Module]:
    return _by_dims(dims, nn.MaxPool2d, nn.MaxPool3d)


def norm_layer(dims: int, norm: str | None, channels: int) -> nn.Module:
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return _by_dims(dims, nn.BatchNorm2d, nn.BatchNorm3d)(channels)
    if norm == "instance":
        return _by_dims(dims, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=True)
    return nn.Identity()


def activation_layer(name: str) -> nn.Module:
    check_choice("activation", name, ACTIVATIONS)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)  # No New-Net's slope
    return nn.ReLU(inplace=True)


class ConvBlock(nn.Sequential):
    """Two 3x3 (or 3x3x3) convolutions, each followed by an optional norm and the activation.

    ``stride`` applies to the first convolution (No New-Net goes down with strided convs);
    ``mid_channels`` lets the second conv change the width (NVIDIA's TinyUNet decoder).
    A conv followed by a norm has no bias: the norm's shift makes it redundant.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, padding: str = "same",
                 norm: str | None = None, activation: str = "relu", *,
                 mid_channels: int | None = None, stride: int = 1):
        super().__init__()
        check_choice("padding", padding, PADDINGS)
        mid = mid_channels or out_channels
        pad = 1 if padding == "same" else 0
        steps = [(in_channels, mid, stride), (mid, out_channels, 1)]
        for i, (cin, cout, step) in enumerate(steps, start=1):
            self.add_module(f"conv{i}", conv_cls(dims)(cin, cout, 3, stride=step, padding=pad,
                                                       bias=norm is None))
            if norm is not None:
                self.add_module(f"norm{i}", norm_layer(dims, norm, cout))
            self.add_module(f"act{i}", activation_layer(activation))


def upsample_layer(dims: int, in_channels: int, out_channels: int, mode: str = "transpose",
                   activation: str | None = None) -> nn.Module:
    """Double the spatial size: a 2x2 stride-2 transposed conv, or nearest x2 then a 2x2 conv.

    Both have the same number of parameters. The 2x2 conv after the nearest upsample is
    NVIDIA's UNet Industrial (TF1) choice; its "same" padding adds the extra row/column at the
    end, as TensorFlow does (PyTorch's padding="same" would warn and copy for even kernels).
    """
    check_choice("upsample", mode, UPSAMPLINGS)
    if mode == "transpose":
        layers = [transposed_conv_cls(dims)(in_channels, out_channels, 2, stride=2)]
    else:
        pad = _by_dims(dims, nn.ZeroPad2d, nn.ZeroPad3d)((0, 1) * dims)
        layers = [nn.Upsample(scale_factor=2, mode="nearest"), pad,
                  conv_cls(dims)(in_channels, out_channels, 2)]
    if activation is not None:
        layers.append(activation_layer(activation))
    return nn.Sequential(*layers)


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre of ``x`` with spatial ``size``: the unpadded UNet's "copy and crop"."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    slices = [slice((have - want) // 2, (have - want) // 2 + want)
              for have, want in zip(x.shape[2:], size)]
    return x[(Ellipsis, *slices)]


def init_he(module: nn.Module, distribution: str = "normal", negative_slope: float = 0.0) -> None:
    """He (Kaiming) initialisation of every conv, zero biases; norms keep (1, 0)."""
    init = nn.init.kaiming_uniform_ if distribution == "uniform" else nn.init.kaiming_normal_
    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for layer in module.modules():
        if isinstance(layer, convs):
            init(layer.weight, a=negative_slope, nonlinearity="leaky_relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


# -- the shared skeleton -----------------------------------------------------------------------

class UNetSkeleton(nn.Module):
    """Encoder blocks with skips, a bottleneck, decoder levels (upsample, concat, block), a head.

    Subclasses set ``name``, build ``encoder``, ``down``, ``bottleneck``, ``ups``, ``decoder``
    and ``head``, and define the per-axis size rule ``_axis_output``.
    """

    name = ""

    def __init__(self, hparams: dict, spatial_dims: int, size_multiple: int,
                 min_size: int | None = None):
        super().__init__()
        self.hparams = {"name": self.name, **hparams}
        self.spatial_dims = spatial_dims
        self.in_channels = hparams["in_channels"]
        # output channels; what they mean (classes or regions, softmax or sigmoid) is the
        # run's label head (engine.labels), kept in the checkpoint, never on the model
        self.num_classes = hparams["num_classes"]
        # Every valid size is a multiple of this plus a fixed offset (0 when padded).
        self.size_multiple = size_multiple
        self.min_size = min_size or size_multiple

    @property
    def description(self) -> str:
        return self.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.down(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.ups, self.decoder, reversed(skips)):
            x = up(x)
            x = block(torch.cat([center_crop(skip, x.shape[2:]), x], dim=1))
        return self.head(x)

    # -- sizes ---------------------------------------------------------------------------------

    def _axis_output(self, n: int) -> int | None:
        """Output length along one axis for input length ``n``, or None if ``n`` is invalid."""
        raise NotImplementedError

    def output_size(self, input_size) -> tuple[int, ...]:
        sizes = self._as_sizes(input_size)
        outputs = [self._axis_output(n) for n in sizes]
        if None in outputs:
            raise InputSizeError(self._size_message(sizes))
        return tuple(outputs)

    def valid_input_size(self, size) -> tuple[int, ...]:
        """The smallest valid input >= ``size`` on each axis."""
        return tuple(self._next_valid(n) for n in self._as_sizes(size))

    def _as_sizes(self, size) -> tuple[int, ...]:
        if isinstance(size, numbers.Integral):
            return (int(size),) * self.spatial_dims
        sizes = tuple(int(n) for n in size)
        if len(sizes) != self.spatial_dims:
            raise InputSizeError(f"{self.description} is {self.spatial_dims}D: give "
                                 f"{self.spatial_dims} sizes, not {len(sizes)} ({sizes})")
        return sizes

    def _next_valid(self, n: int) -> int:
        n = max(int(n), 1)
        while self._axis_output(n) is None:  # at most the minimum size or one period
            n += 1
        return n

    def _previous_valid(self, n: int) -> int | None:
        while n >= 1 and self._axis_output(n) is None:
            n -= 1
        return n if n >= 1 else None

    def _size_message(self, sizes: tuple[int, ...]) -> str:
        bad = sorted({n for n in sizes if self._axis_output(n) is None})
        hints = [self._size_hint(n) for n in bad]
        hint = hints[0] if len(set(hints)) == 1 else "; ".join(
            f"for {n}: {h}" for n, h in zip(bad, hints))
        shown = "x".join(str(n) for n in sizes)
        return f"input {shown} is not valid for {self.description}: {hint}"

    def _size_hint(self, n: int) -> str:
        choices = [c for c in (self._previous_valid(n), self._next_valid(n)) if c is not None]
        outputs = [self._axis_output(c) for c in choices]
        use = " or ".join(str(c) for c in choices)
        if outputs == choices:
            least = f", at least {self.min_size}" if self.min_size > self.size_multiple else ""
            return f"use {use} (sizes must be multiples of {self.size_multiple}{least})"
        return f"use {use} (output {' or '.join(str(o) for o in outputs)})"

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.compiler.is_compiling():  # keep compiled graphs free of Python checks
            return
        if x.ndim != self.spatial_dims + 2:
            raise DataError(f"{self.description} takes batches shaped (B, C, "
                            f"{'Z, Y, X' if self.spatial_dims == 3 else 'Y, X'}), "
                            f"not {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise DataError(f"{self.description} takes {self.in_channels} input channel(s), "
                            f"not {x.shape[1]}: rebuild it with in_channels={x.shape[1]}")
        self.output_size(tuple(x.shape[2:]))


def multiple_output(n: int, multiple: int, minimum: int) -> int | None:
    """Padded networks: same size out, valid when every downsampling divides exactly."""
    return n if n >= minimum and n % multiple == 0 else None


def instance_norm_min_size(norm: str | None, multiple: int) -> int:
    """InstanceNorm needs more than one voxel at the bottleneck: two per axis at least."""
    return 2 * multiple if norm == "instance" else multiple
