"""Random flips, 90-degree rotations, elastic deformation, crop + resize, brightness shifts and
contrast changes of training batches.

Works on batch tensors on any device, for 2D and 3D alike (the spatial axes are the last
`spatial_dims` axes). The image window may be larger than the mask window (the unpadded UNet:
572 in, 388 out) as long as both are concentric; every transform here keeps them aligned.
Random choices come from a CPU `torch.Generator`, so a seeded run augments identically on CPU,
one GPU or several; training runs it on the device (engine.pipeline), and nothing here reads
a value back from a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..config import check_intensity_and_elastic
from . import intensity


class Augmenter:
    """Per-item random augmentation of (x (B, C, *S) float, y (B, *S) long) batches.

    hflip / vflip: probabilities of flipping X / Y. rot90: the allowed quarter turns of the
    last two axes, one drawn per item (1 and 3 are skipped when those axes are not square).
    crop_resize: (min_scale, max_scale), the side of a random crop as a fraction of the
    window, resized back (bilinear or trilinear for x, nearest for y). brightness: a shift
    of x drawn from [-b, b]. flip_all_axes: flip each spatial axis with p = 0.5 (3D data has
    no up or left). elastic: the probability of the original U-Net paper's elastic deformation,
    random displacements on a coarse `elastic_grid`^dims grid of control points over the image
    window (Gaussian, standard deviation `elastic_magnitude` pixels), interpolated smoothly to
    every pixel (bicubic in 2D, trilinear in 3D). contrast: each item's channels scaled about
    their own mean by a factor drawn from [1 - c, 1 + c], one per channel (nnU-Net's contrast
    augmentation; multi-modal MRI gets a different contrast per modality). gamma /
    low_resolution: the probability, per item and channel, of nnU-Net's gamma change and
    simulated low resolution (:mod:`.intensity`; images from other scanners).
    """

    def __init__(self, spatial_dims: int, hflip: float = 0.0, vflip: float = 0.0, rot90=(),
                 crop_resize=None, brightness: float = 0.0, flip_all_axes: bool = False,
                 elastic: float = 0.0, elastic_magnitude: float = 10.0, elastic_grid: int = 3,
                 contrast: float = 0.0, gamma: float = 0.0, low_resolution: float = 0.0):
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")
        if any(k not in (0, 1, 2, 3) for k in rot90):
            raise ConfigError(f"rot90 takes quarter turns from 0, 1, 2, 3, not {tuple(rot90)}")
        if crop_resize is not None and not 0 < crop_resize[0] <= crop_resize[1] <= 1:
            raise ConfigError(
                f"crop_resize {tuple(crop_resize)}: use 0 < min_scale <= max_scale <= 1"
            )
        check_intensity_and_elastic(contrast, elastic, elastic_magnitude, elastic_grid,
                                    gamma, low_resolution)
        self.spatial_dims = spatial_dims
        self.gamma, self.low_resolution = float(gamma), float(low_resolution)
        self.contrast = float(contrast)
        self.elastic, self.elastic_magnitude = float(elastic), float(elastic_magnitude)
        self.elastic_grid = int(elastic_grid)
        self.hflip, self.vflip, self.brightness = float(hflip), float(vflip), float(brightness)
        self.rot90 = tuple(int(k) for k in rot90)
        self.crop_resize = None if crop_resize is None else tuple(float(s) for s in crop_resize)
        self.flip_all_axes = bool(flip_all_axes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                 offset: int = 0, global_batch: int | None = None):
        """Augment a batch. Under DDP each rank holds items ``offset..offset+B`` of a global
        batch: the draws are made for the whole global batch and sliced, so the items get the
        same augmentation whatever the number of processes."""
        if self.does_nothing:  # no draws needed: the step's generator serves nothing else
            return x, y
        total = global_batch or x.shape[0]
        draws = {k: v[offset:offset + x.shape[0]]
                 for k, v in self._draw(total, generator, x.shape[1]).items()}
        items = [self._flip_and_rotate(x[i], y[i], draws, i) for i in range(x.shape[0])]
        x = torch.stack([item[0] for item in items])
        y = torch.stack([item[1] for item in items])
        if self.elastic and self.elastic_magnitude:
            x, y = self._elastic(x, y, draws)
        if self.crop_resize is not None:
            x, y = self._crop_and_resize(x, y, draws)
        if self.brightness:
            shift = (draws["brightness"] * 2 - 1) * self.brightness
            x = x + _to(shift, x).view(-1, *([1] * (x.ndim - 1)))
        if self.contrast:
            factor = 1 + (draws["contrast"] * 2 - 1) * self.contrast
            factor = _to(factor, x).view(*x.shape[:2], *([1] * (x.ndim - 2)))
            mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
            x = (x - mean) * factor + mean
        if self.gamma:
            x = intensity.gamma(x, draws["gamma_on"], draws["gamma"])
        if self.low_resolution:
            x = intensity.low_resolution(x, draws["low_resolution_on"], draws["low_resolution"])
        return x, y

    @property
    def does_nothing(self) -> bool:
        """Whether every augmentation is off (no flip, no turn but 0, ...): batches pass as
        they are, without the per-item loop (issue 35: a small step's overhead)."""
        return not (self.hflip or self.vflip or self.flip_all_axes or any(self.rot90)
                    or (self.elastic and self.elastic_magnitude) or self.crop_resize
                    or self.brightness or self.contrast or self.gamma or self.low_resolution)

    def _draw(self, batch: int, generator: torch.Generator, channels: int = 1) -> dict:
        """All random numbers of a batch, always in the same order whatever is switched on,
        so enabling one augmentation does not change the draws of the others."""
        dims = self.spatial_dims
        draws = {
            "hflip": torch.rand(batch, generator=generator) < self.hflip,
            "vflip": torch.rand(batch, generator=generator) < self.vflip,
            "axes": torch.rand(batch, dims, generator=generator) < 0.5,
            "rot90": torch.randint(0, 1 << 16, (batch,), generator=generator),
            "scale": torch.rand(batch, generator=generator),
            "centre": torch.rand(batch, dims, generator=generator),
            "brightness": torch.rand(batch, generator=generator),
            "elastic": torch.rand(batch, generator=generator) < self.elastic,
            "field": torch.randn((batch, dims) + (self.elastic_grid,) * dims,
                                 generator=generator),
            "contrast": torch.rand(batch, channels, generator=generator),
        }
        if self.gamma or self.low_resolution:  # drawn only then: older recipes draw as before
            draws.update({
                "gamma_on": torch.rand(batch, channels, generator=generator) < self.gamma,
                "gamma": torch.rand(batch, channels, generator=generator),
                "low_resolution_on": torch.rand(batch, channels, generator=generator)
                < self.low_resolution,
                "low_resolution": torch.rand(batch, channels, generator=generator)})
        return draws

    def _flip_and_rotate(self, x, y, draws, i):
        # flips and quarter turns act about each window's centre, so concentric windows of
        # different sizes stay concentric and aligned
        axes = set()
        if draws["hflip"][i]:
            axes ^= {-1}
        if draws["vflip"][i]:
            axes ^= {-2}
        if self.flip_all_axes:
            axes ^= {-1 - a for a in range(self.spatial_dims) if draws["axes"][i, a]}
        if axes:
            x, y = x.flip(sorted(axes)), y.flip(sorted(axes))
        k = self.rot90[int(draws["rot90"][i]) % len(self.rot90)] if self.rot90 else 0
        square = x.shape[-1] == x.shape[-2] and y.shape[-1] == y.shape[-2]
        if k == 2 or (k and square):  # a quarter turn would change a non-square shape
            x, y = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(y, k, dims=(-2, -1))
        return x, y

    def _elastic(self, x, y, draws):
        """Warp the chosen items of x (linear) and y (nearest) with one smooth displacement
        field each. The field is defined over the image window; the mask window reads its
        concentric part, so both stay aligned. Samples falling outside a window are mirrored."""
        chosen = draws["elastic"].nonzero().flatten()
        if chosen.numel() == 0:
            return x, y
        chosen = chosen.to(x.device, non_blocking=True)
        dims, in_size, out_size = self.spatial_dims, x.shape[2:], y.shape[1:]
        coarse = _to(draws["field"][draws["elastic"]], x, torch.float32)
        field = F.interpolate(coarse * self.elastic_magnitude, size=tuple(in_size),
                              mode="bicubic" if dims == 2 else "trilinear", align_corners=True)
        margin = [(i - o) // 2 for i, o in zip(in_size, out_size)]
        inner = field[(slice(None), slice(None)) + tuple(slice(m, m + o)
                                                         for m, o in zip(margin, out_size))]
        x, y = x.clone(), y.clone()
        x[chosen] = F.grid_sample(x[chosen], _warp_grid(field, x.dtype), mode="bilinear",
                                  padding_mode="reflection", align_corners=False)
        warped = F.grid_sample(y[chosen][:, None].to(torch.float32),
                               _warp_grid(inner, torch.float32), mode="nearest",
                               padding_mode="reflection", align_corners=False)
        y[chosen] = warped[:, 0].round().to(y.dtype)
        return x, y

    def _crop_and_resize(self, x, y, draws):
        """Zoom into a random crop of the mask window and the concentric crop of the image
        window by the same factor. Sampling grids in normalised coordinates make both exact
        for any sizes: the zoom about the crop centre maps the image window's centre to the
        mask window's centre, and the image crop always stays inside the image window."""
        low, high = self.crop_resize
        scale = (low + (high - low) * draws["scale"]).to(torch.float64)
        out_size = torch.tensor(y.shape[1:], dtype=torch.float64)
        in_size = torch.tensor(x.shape[2:], dtype=torch.float64)
        margin = (in_size - out_size) / 2
        # crop centre in mask pixels, anywhere that keeps the crop inside the mask window
        half = scale[:, None] * out_size / 2
        centre = half + draws["centre"].to(torch.float64) * (out_size - 2 * half)
        x = _zoom(x, scale, 2 * (centre + margin) / in_size - 1, "bilinear")
        y = _zoom(y[:, None].to(x.dtype), scale, 2 * centre / out_size - 1, "nearest")
        return x, y[:, 0].round().to(torch.long)


def _to(draws: torch.Tensor, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Random draws (made on the CPU) moved to `like`'s device without waiting for it: a
    blocking copy to a GPU would stop the host until every queued kernel has run, and so
    does a copy from pageable memory (CUDA's API synchronization behavior), hence the pinned
    memory (torch's caching host allocator: no new pinning after the first steps)."""
    if like.is_cuda:
        draws = draws.pin_memory()
    return draws.to(like.device, dtype or like.dtype, non_blocking=True)


def _warp_grid(displacement, dtype):
    """grid_sample's grid for an identity plus `displacement` (B, dims, *S) in pixels along
    each spatial axis (align_corners=False: the window spans [-1, 1] edge to edge)."""
    batch, dims, size = displacement.shape[0], displacement.shape[1], displacement.shape[2:]
    theta = torch.zeros(batch, dims, dims + 1, dtype=torch.float32, device=displacement.device)
    theta[:, range(dims), range(dims)] = 1.0
    grid = F.affine_grid(theta, [batch, 1, *size], align_corners=False)
    scale = _to(torch.tensor([2.0 / n for n in size]), displacement)
    shift = (displacement * scale.view(1, dims, *([1] * dims))).movedim(1, -1).flip(-1)
    return (grid + shift).to(dtype)


def _zoom(tensor, scale, centre, mode):
    """Resample (B, C, *S) so that output coordinate u reads input centre + scale * u, in
    normalised coordinates (align_corners=False: -1 and 1 are the outer pixel edges)."""
    batch, dims = tensor.shape[0], tensor.ndim - 2
    theta = torch.zeros(batch, dims, dims + 1, dtype=torch.float64)
    theta[:, range(dims), range(dims)] = scale[:, None]
    theta[:, :, dims] = centre.flip(-1)  # affine_grid orders coordinates x, y(, z)
    theta = _to(theta, tensor)
    grid = F.affine_grid(theta, list(tensor.shape), align_corners=False)
    return F.grid_sample(tensor, grid, mode=mode, padding_mode="border", align_corners=False)
