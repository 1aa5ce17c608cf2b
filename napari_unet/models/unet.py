"""The original UNet (Ronneberger et al. 2015), and its padded variant.

Unpadded ("valid") 3x3 convs + ReLU, widths 64-128-256-512-1024, 2x2 max-pool, 2x2 stride-2
up-convolutions, copy-and-crop skips, a 1x1 head: 572x572 in, 388x388 out, 31,030,658
(31.03 M) parameters with the defaults. ``padding="same"`` keeps the output the size of the
input for sizes that are multiples of 2**(depth-1).
"""
from __future__ import annotations

from functools import partial

from torch import nn

from .blocks import (
    NORMS,
    PADDINGS,
    ConvBlock,
    UNetSkeleton,
    captured_options,
    check_choice,
    check_fraction,
    check_int,
    conv_cls,
    init_he,
    instance_norm_min_size,
    max_pool_cls,
    multiple_output,
    upsample_layer,
)


class UNet(UNetSkeleton):
    name = "unet"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 5, padding: str = "valid", norm: str | None = None,
                 dropout: float = 0.5):
        hparams = captured_options(locals())
        for option in ("in_channels", "num_classes", "base_channels"):
            check_int(option, hparams[option])
        check_int("depth", depth, minimum=2)
        check_choice("padding", padding, PADDINGS)
        check_choice("norm", norm, NORMS)
        check_fraction("dropout", dropout)
        multiple = 2 ** (depth - 1)
        super().__init__(hparams, spatial_dims=2, size_multiple=multiple,
                         min_size=instance_norm_min_size(norm, multiple))
        self.depth, self.padding = depth, padding

        widths = [base_channels * 2 ** level for level in range(depth)]
        block = partial(ConvBlock, 2, padding=padding, norm=norm, activation="relu")
        self.encoder = nn.ModuleList(
            block(cin, cout) for cin, cout in zip([in_channels] + widths[:-2], widths[:-1]))
        self.down = max_pool_cls(2)(2)
        # The paper puts dropout "at the end of the contracting path".
        self.bottleneck = nn.Sequential(block(widths[-2], widths[-1]), nn.Dropout(dropout))
        # Each up-convolution halves the channels; the crop-and-concat doubles them back.
        self.ups = nn.ModuleList(upsample_layer(2, 2 * w, w, "transpose", activation="relu")
                                 for w in reversed(widths[:-1]))
        self.decoder = nn.ModuleList(block(2 * w, w) for w in reversed(widths[:-1]))
        self.head = conv_cls(2)(widths[0], num_classes, 1)
        # The paper's init: Gaussian with std sqrt(2 / fan_in).
        init_he(self, "normal")

    @property
    def description(self) -> str:
        return f"the {'unpadded' if self.padding == 'valid' else 'padded'} UNet"

    def _axis_output(self, n: int) -> int | None:
        if self.padding == "same":
            return multiple_output(n, self.size_multiple, self.min_size)
        # Each level's two unpadded 3x3 convs take 4 pixels; each pooling must divide exactly.
        for _ in range(self.depth - 1):
            n -= 4
            if n <= 0 or n % 2:
                return None
            n //= 2
        n -= 4
        for _ in range(self.depth - 1):
            if n <= 0:
                return None
            n = 2 * n - 4
        return n if n > 0 else None
