"""Small synthetic data sets, seeded, each made in well under a second.

They stand in for the three reference problems so that the demo, the tests and a first-time
user can train without downloading anything: a small UNet learns each of them in a few dozen
steps (the contrast is clear), yet none is a plain threshold (texture, noise and blur).
"""
from __future__ import annotations

import numpy as np
from skimage.draw import ellipse
from skimage.filters import gaussian
from skimage.segmentation import find_boundaries


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit standard deviation."""
    field = gaussian(rng.standard_normal(shape), sigma=sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def dagm_like(n: int = 8, size: int = 128, seed: int = 0):
    """DAGM 2007 Class 1-like textures; about half of the images carry one elliptical defect
    (darker or brighter, with a texture of its own), labelled by its ellipse like DAGM's weak
    labels; the others have an empty mask.

    Returns images uint8 (n, size, size) and masks uint8 (n, size, size) with 1 = defect.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    defective = rng.permutation(n) < (n + 1) // 2
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 12)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        texture = 128 + 18 * _smooth_noise(rng, (size, size), 1.5) + 10 * stripes
        if defective[i]:
            masks[i] = _random_ellipse(rng, size)
            # soft edge, so the defect is a little smaller than its (weak) label, as in DAGM
            defect = gaussian(masks[i].astype(float), sigma=2) ** 2
            shift = rng.choice([-1, 1]) * rng.uniform(45, 65)
            texture += defect * (shift + 15 * _smooth_noise(rng, (size, size), 0.7))
        images[i] = _to_uint8(texture + rng.normal(0, 6, (size, size)))
    return images, masks


def _random_ellipse(rng: np.random.Generator, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    radii = rng.uniform(0.07, 0.16, 2) * size
    centre = rng.uniform(0.2, 0.8, 2) * size
    rows, cols = ellipse(*centre, *radii, shape=mask.shape, rotation=rng.uniform(-np.pi, np.pi))
    mask[rows, cols] = 1
    return mask


def em_like(n: int = 8, size: int = 128, seed: int = 0):
    """Electron-microscopy-like slices: Voronoi cells of varied grey with dark, thin membranes,
    dark vesicles inside the cells, blur and noise (like ISBI 2012).

    Returns images uint8 (n, size, size) and masks uint8 (n, size, size) with 1 = membrane.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cells = _voronoi(rng, size, n_cells=max(4, size * size // 500))
        membrane = find_boundaries(cells, mode="thick")
        shade = rng.uniform(150, 210, cells.max() + 1)[cells]
        vesicles = _vesicles(rng, size) & ~membrane
        image = shade - 100 * membrane - 45 * vesicles + 10 * _smooth_noise(rng, (size, size), 2)
        image = gaussian(image, sigma=0.8, preserve_range=True) + rng.normal(0, 8, image.shape)
        images[i], masks[i] = _to_uint8(image), membrane
    return images, masks


def _voronoi(rng: np.random.Generator, size: int, n_cells: int) -> np.ndarray:
    """Label image of the nearest of `n_cells` random seeds (a Voronoi tessellation)."""
    seeds = rng.uniform(0, size, (n_cells, 2))
    grid = np.stack(np.mgrid[:size, :size], axis=-1).reshape(-1, 1, 2)
    nearest = ((grid - seeds[None]) ** 2).sum(-1).argmin(1)
    return nearest.reshape(size, size)


def _vesicles(rng: np.random.Generator, size: int) -> np.ndarray:
    spots = np.zeros((size, size), bool)
    for _ in range(size * size // 800):
        radius = rng.uniform(1.0, 2.5)
        rows, cols = ellipse(*rng.uniform(0, size, 2), radius, radius, shape=spots.shape)
        spots[rows, cols] = True
    return spots


def blobs3d(n: int = 2, size: int = 48, channels: int = 2, seed: int = 0):
    """3D volumes with a lumpy blob (class 1) holding a smaller blob (class 2), like a tumour
    with its core. Channel 0 shows the whole blob bright, channel 1 only the core (the outer
    shell slightly dark), further channels mixtures; all with smooth noise.

    Returns images float32 (n, channels, size, size, size), labels uint8 (n, size, size, size).
    """
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    images = np.empty((n, channels) + shape, np.float32)
    labels = np.zeros((n,) + shape, np.uint8)
    for i in range(n):
        outer = _lumpy_blob(rng, shape, centre=rng.uniform(0.35, 0.65, 3), radius=0.26)
        core_centre = _random_voxel(rng, outer) / size
        inner = _lumpy_blob(rng, shape, centre=core_centre, radius=0.13) & outer
        labels[i] = outer.astype(np.uint8) + inner
        extra = [tuple(rng.uniform(-1, 1, 2)) for _ in range(2, channels)]
        contrasts = [(1.0, 0.0), (-0.4, 1.4)] + extra
        for c in range(channels):
            whole, core = contrasts[c]
            signal = whole * outer + core * inner + 0.35 * _smooth_noise(rng, shape, 2)
            images[i, c] = signal + rng.normal(0, 0.15, shape)
    return images, labels


def _lumpy_blob(rng: np.random.Generator, shape, centre, radius: float) -> np.ndarray:
    """A sphere of `radius` (fraction of the size) with a smoothly perturbed surface."""
    size = shape[0]
    grid = np.stack(np.meshgrid(*[np.arange(s) / size for s in shape], indexing="ij"))
    distance = np.sqrt(((grid - np.asarray(centre).reshape(3, 1, 1, 1)) ** 2).sum(0))
    wobble = 1 + 0.2 * _smooth_noise(rng, shape, size / 8)
    return distance < radius * wobble


def _random_voxel(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    coords = np.argwhere(mask)
    return coords[rng.integers(len(coords))].astype(float)


SAMPLES = {"dagm": dagm_like, "em": em_like, "blobs3d": blobs3d}
