"""TinyUNet, NVIDIA's "UNet Industrial" (DeepLearningExamples, TensorFlow/Segmentation).

Laid out as NVIDIA's code builds it (``model/unet.py`` with its ``blocks/``), widths for
``base_channels=b`` (b=32 there):

- an input block and three down blocks, each two 3x3 "same" convs + ReLU then a 2x2
  max-pool: b, b, 2b, 4b (so four poolings: input sizes are multiples of 16);
- a bottleneck of two 8b convs;
- four decoder levels, each "upsample + conv, concat the skip, two 3x3 convs"; the second
  conv halves the width (8b->4b->2b, 4b->2b->b, 2b->b->b/2) except at the last level, which
  keeps b and ends in a 1x1 head with ``num_classes`` logits (1 = binary; the sigmoid is
  applied by the loss and by inference, not here).

``upsample="upsample_conv"`` (default, the document's) is a nearest x2 upsample followed by
a 2x2 conv, which is also what NVIDIA's TF1 ``deconv2d`` does by default;
``upsample="transpose"`` is a 2x2 stride-2 transposed conv (NVIDIA's TF2 port). Both have the
same parameter count, 1,850,305 for b=32: NVIDIA's source comment says 1,824,945, which its
own blocks do not add up to (see tests/test_models.py).
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ..errors import ConfigError
from .blocks import (
    UPSAMPLINGS,
    ConvBlock,
    UNetSkeleton,
    captured_options,
    check_choice,
    check_int,
    conv_cls,
    init_he,
    max_pool_cls,
    multiple_output,
    upsample_layer,
)


class TinyUNet(UNetSkeleton):
    name = "tiny_unet"

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 32,
                 upsample: str = "upsample_conv"):
        hparams = captured_options(locals())
        for option in ("in_channels", "num_classes", "base_channels"):
            check_int(option, hparams[option])
        if base_channels % 2:  # the decoder halves it
            raise ConfigError(f"base_channels={base_channels} is not valid: use an even number")
        check_choice("upsample", upsample, UPSAMPLINGS)
        super().__init__(hparams, spatial_dims=2, size_multiple=16)

        b = base_channels
        widths = [b, b, 2 * b, 4 * b]  # the input block, then NVIDIA's three down blocks
        block = partial(ConvBlock, 2, padding="same", activation="relu")
        self.encoder = nn.ModuleList(
            block(cin, cout) for cin, cout in zip([in_channels] + widths[:-1], widths))
        self.down = max_pool_cls(2)(2)
        self.bottleneck = block(4 * b, 8 * b)

        skips = list(reversed(widths))                      # 4b, 2b, b, b
        outs = [w // 2 for w in skips[:-1]] + [b]           # 2b, b, b/2, b
        up_in, up_out = [8 * b] + outs[:-1], [skips[0]] + outs[:-1]
        # NVIDIA follows every upsampling with a ReLU.
        self.ups = nn.ModuleList(upsample_layer(2, cin, cout, upsample, activation="relu")
                                 for cin, cout in zip(up_in, up_out))
        self.decoder = nn.ModuleList(block(u + s, o, mid_channels=s)
                                     for u, s, o in zip(up_out, skips, outs))
        self.head = conv_cls(2)(b, num_classes, 1)
        init_he(self, "uniform")  # NVIDIA's default: He uniform, zero biases

    @property
    def description(self) -> str:
        return "TinyUNet"

    def _axis_output(self, n: int) -> int | None:
        return multiple_output(n, self.size_multiple, self.min_size)
