"""Tile batches on their way to the device: the default batch, the buffers, a GPU when present."""
import numpy as np
import pytest
import torch

from napari_unet.engine.prediction.sliding_window import (
    default_tile_batch,
    sliding_window_probabilities,
)
from napari_unet.models import build_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def model_and_image():
    torch.manual_seed(0)
    model = build_model("tiny_unet", in_channels=1, num_classes=2, base_channels=4)
    image = np.random.default_rng(0).random((1, 80, 72)).astype(np.float32)
    return model, image


def test_without_a_batch_size_a_cpu_takes_four_tiles_and_predicts_the_same():
    model, image = model_and_image()
    assert default_tile_batch(model, (1, 32, 32), torch.device("cpu")) == 4
    chosen = sliding_window_probabilities(model, image, tile_size=32, overlap=0.5, batch_size=None)
    one = sliding_window_probabilities(model, image, tile_size=32, overlap=0.5, batch_size=1)
    np.testing.assert_allclose(chosen, one, atol=1e-6)


@cuda
def test_on_a_gpu_the_tile_batch_fills_half_the_free_memory_and_matches_the_cpu():
    model, image = model_and_image()
    device = torch.device("cuda", 0)
    batch = default_tile_batch(model.to(device), (1, 32, 32), device)
    assert 1 <= batch <= 64
    on_gpu = sliding_window_probabilities(model, image, tile_size=32, overlap=0.5, batch_size=None,
                           device=device)
    on_cpu = sliding_window_probabilities(model.cpu(), image, tile_size=32, overlap=0.5, batch_size=3,
                           device="cpu")
    np.testing.assert_allclose(on_gpu, on_cpu, atol=5e-3)  # TF32 convolutions: about 1e-3
    assert torch.backends.cudnn.benchmark  # the training settings
