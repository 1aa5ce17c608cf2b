"""The 3D U-Net (Cicek et al.) with the No New-Net changes, as NVIDIA's PyTorch nnU-Net builds it.

Padded 3x3x3 convs, each followed by InstanceNorm (affine) and LeakyReLU(0.01); widths
32-64-128-256-320-320 (doubling from ``base_channels``, capped at ``max_channels``); the
first conv of every level below the top has stride 2 (no pooling); 2x2x2 transposed convs go
up; a 1x1x1 head gives ``num_classes`` softmax logits. No deep supervision. Input sizes are
multiples of 2**(depth-1) (32 with the defaults), at least twice that (64) so that the
bottleneck's InstanceNorm sees more than one voxel. ``spatial_dims=2`` builds the same
network in 2D.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from .blocks import (
    ConvBlock,
    UNetSkeleton,
    captured_options,
    check_choice,
    check_int,
    conv_cls,
    init_he,
    instance_norm_min_size,
    multiple_output,
    upsample_layer,
)

NEGATIVE_SLOPE = 0.01


class UNet3D(UNetSkeleton):
    name = "unet3d"

    def __init__(self, in_channels: int = 4, num_classes: int = 4, base_channels: int = 32,
                 max_channels: int = 320, depth: int = 6, spatial_dims: int = 3):
        hparams = captured_options(locals())
        for option in ("in_channels", "num_classes", "base_channels", "max_channels"):
            check_int(option, hparams[option])
        check_int("depth", depth, minimum=2)
        check_choice("spatial_dims", spatial_dims, (2, 3))
        multiple = 2 ** (depth - 1)
        super().__init__(hparams, spatial_dims=spatial_dims, size_multiple=multiple,
                         min_size=instance_norm_min_size("instance", multiple))

        dims = spatial_dims
        widths = [min(base_channels * 2 ** level, max_channels) for level in range(depth)]
        block = partial(ConvBlock, dims, padding="same", norm="instance", activation="leaky_relu")
        self.encoder = nn.ModuleList(
            [block(in_channels, widths[0])]
            + [block(cin, cout, stride=2) for cin, cout in zip(widths[:-2], widths[1:-1])])
        self.down = nn.Identity()  # the strided first conv of the next level goes down
        self.bottleneck = block(widths[-2], widths[-1], stride=2)
        self.ups = nn.ModuleList(upsample_layer(dims, cin, cout, "transpose")
                                 for cin, cout in zip(widths[:0:-1], widths[-2::-1]))
        self.decoder = nn.ModuleList(block(2 * w, w) for w in widths[-2::-1])
        self.head = conv_cls(dims)(widths[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # nnU-Net's: He normal for the convs (leaky-ReLU gain), gain 1 for the transposed
        # convs, which no activation follows; zero biases.
        init_he(self, "normal", negative_slope=NEGATIVE_SLOPE)
        init_he(self.ups, "normal", negative_slope=1.0)

    @property
    def description(self) -> str:
        return f"the {self.spatial_dims}D-UNet"

    def _axis_output(self, n: int) -> int | None:
        return multiple_output(n, self.size_multiple, self.min_size)
