"""Losses: known values on hand-made arrays, both heads, 2D and 3D, AMP and gradients."""
import pytest
import torch
import torch.nn.functional as F

from napari_unet.choices import IGNORE_CLASS
from napari_unet.engine.training.losses import (
    AdaptiveLoss,
    DiceCELoss,
    available_losses,
    build_loss,
    cross_entropy,
    soft_dice_loss,
)
from napari_unet.errors import ConfigError

# A 2x2 image: one background pixel, three foreground pixels.
TARGET_2X2 = torch.tensor([[[0, 1], [1, 1]]])


def confident_logits(target: torch.Tensor, num_classes: int, scale: float = 30.0) -> torch.Tensor:
    """Logits that predict ``target`` with probability ~1 (sigmoid head for num_classes == 1)."""
    if num_classes == 1:
        return ((2.0 * target.float() - 1.0) * scale).unsqueeze(1)
    onehot = F.one_hot(target, num_classes).movedim(-1, 1).float()
    return (2.0 * onehot - 1.0) * scale


def random_target(shape, num_classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, max(num_classes, 2), shape, generator=generator)


SHAPES = [(2, 8, 8), (2, 4, 6, 6)]  # (B, Y, X) and (B, Z, Y, X)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_perfect_prediction_has_zero_dice_loss(shape, num_classes):
    target = random_target(shape, num_classes)
    logits = confident_logits(target, num_classes)
    for include_background in (True, False):
        loss = soft_dice_loss(logits, target, include_background=include_background)
        assert loss.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("num_classes", [1, 2])
def test_opposite_prediction_has_dice_loss_one(shape, num_classes):
    target = random_target(shape, num_classes)
    logits = confident_logits(1 - target, num_classes)
    loss = soft_dice_loss(logits, target, smooth=0.0)
    assert loss.item() == pytest.approx(1.0, abs=1e-5)


def test_hand_computed_values_for_uniform_probabilities():
    logits = torch.zeros(1, 2, 2, 2)  # softmax 0.5 everywhere
    # background: I = 0.5, |P| = 2, |T| = 1 -> (1 + 1) / (3 + 1); foreground: I = 1.5, |P| = 2,
    # |T| = 3 -> (3 + 1) / (5 + 1).
    both = 1 - (2 / 4 + 4 / 6) / 2
    assert soft_dice_loss(logits, TARGET_2X2).item() == pytest.approx(both)
    assert soft_dice_loss(logits, TARGET_2X2, include_background=False).item() == \
        pytest.approx(1 - 4 / 6)
    # squared denominator: sum(p^2) = 1 for both classes.
    squared = 1 - ((1 + 1) / (1 + 1 + 1) + (3 + 1) / (1 + 3 + 1)) / 2
    assert soft_dice_loss(logits, TARGET_2X2, squared=True).item() == pytest.approx(squared)


def test_sigmoid_head_equals_two_class_softmax():
    target = random_target((3, 5, 7), 2, seed=1)
    foreground_logit = torch.randn(3, 1, 5, 7, generator=torch.Generator().manual_seed(2))
    two_class = torch.cat([torch.zeros_like(foreground_logit), foreground_logit], dim=1)
    for include_background in (True, False):
        a = soft_dice_loss(foreground_logit, target, include_background=include_background)
        b = soft_dice_loss(two_class, target, include_background=include_background)
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
    assert cross_entropy(foreground_logit, target).item() == \
        pytest.approx(cross_entropy(two_class, target).item(), abs=1e-6)


def test_batch_dice_pools_images_and_per_image_dice_averages_them():
    target = random_target((2, 6, 6), 3, seed=3)
    target[1] = 0  # the second image has no foreground at all
    logits = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    per_image = soft_dice_loss(logits, target, batch_dice=False)
    singles = [soft_dice_loss(logits[i:i + 1], target[i:i + 1]) for i in range(2)]
    assert per_image.item() == pytest.approx(sum(s.item() for s in singles) / 2, abs=1e-6)
    assert soft_dice_loss(logits, target, batch_dice=True).item() != \
        pytest.approx(per_image.item(), abs=1e-3)


def test_dice_ce_is_the_sum_of_its_terms_and_logs_them():
    target = random_target((2, 4, 5, 5), 3, seed=5)
    logits = torch.randn(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(6))
    for include_background in (True, False):
        loss_fn = DiceCELoss(include_background=include_background)
        loss = loss_fn(logits, target)
        dice = soft_dice_loss(logits, target, include_background=include_background)
        ce = F.cross_entropy(logits, target)
        assert loss.item() == pytest.approx((dice + ce).item(), abs=1e-6)
        assert set(loss_fn.last_terms) == {"dice_loss", "ce"}
        assert float(loss_fn.last_terms["ce"]) == pytest.approx(ce.item(), abs=1e-6)
    with_background = DiceCELoss(include_background=True)(logits, target)
    without = DiceCELoss(include_background=False)(logits, target)
    assert with_background.item() != pytest.approx(without.item(), abs=1e-4)


def test_binary_cross_entropy_for_the_sigmoid_head():
    target = random_target((2, 8, 8), 1, seed=7)
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    assert build_loss("ce", 1)(logits, target).item() == pytest.approx(expected.item())


def _small_defect_batch():
    target = torch.zeros(4, 16, 16, dtype=torch.long)
    target[:, 5:9, 6:10] = 1
    return target


def test_adaptive_loss_uses_bce_while_dice_loss_is_high():
    target = _small_defect_batch()
    logits = torch.zeros(4, 1, 16, 16, requires_grad=True)  # p = 0.5: Dice loss ~0.89
    loss_fn = AdaptiveLoss()
    loss = loss_fn(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    assert float(loss_fn.last_terms["dice_loss"]) >= 0.3
    assert float(loss_fn.last_terms["uses_dice"]) == 0.0
    assert loss.item() == pytest.approx(bce.item())
    loss.backward()
    expected_grad, = torch.autograd.grad(bce, logits)
    assert torch.allclose(logits.grad, expected_grad)


def test_adaptive_loss_uses_dice_once_dice_loss_is_low():
    target = _small_defect_batch()
    logits = confident_logits(target, 1, scale=3.0).requires_grad_()
    loss_fn = AdaptiveLoss()
    loss = loss_fn(logits, target)
    dice = soft_dice_loss(logits, target, include_background=False)
    assert dice.item() < 0.3
    assert float(loss_fn.last_terms["uses_dice"]) == 1.0
    assert loss.item() == pytest.approx(dice.item())
    loss.backward()
    expected_grad, = torch.autograd.grad(dice, logits)
    assert torch.allclose(logits.grad, expected_grad)


def test_adaptive_loss_decides_on_each_batch_alone_at_the_threshold():
    target = _small_defect_batch()
    logits = confident_logits(target, 1, scale=1.0)
    dice = soft_dice_loss(logits, target, include_background=False).item()
    bce = cross_entropy(logits, target).item()
    assert AdaptiveLoss(threshold=dice + 1e-3)(logits, target).item() == pytest.approx(dice)
    assert AdaptiveLoss(threshold=dice - 1e-3)(logits, target).item() == pytest.approx(bce)
    # No memory between steps: a bad batch after a good one goes back to cross-entropy.
    loss_fn = AdaptiveLoss()
    loss_fn(confident_logits(target, 1), target)
    assert float(loss_fn.last_terms["uses_dice"]) == 1.0
    loss_fn(torch.zeros(4, 1, 16, 16), target)
    assert float(loss_fn.last_terms["uses_dice"]) == 0.0


@pytest.mark.parametrize("name", ["dice_ce", "dice_ce_foreground", "dice", "adaptive"])
def test_dice_sums_are_float32_under_bf16_autocast(name):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)
    image = torch.randn(2, 2, 24, 24, 24)
    target = random_target((2, 24, 24, 24), 3, seed=9)
    loss_fn = build_loss(name, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, target)
    assert loss.dtype == torch.float32
    # Same bf16 logits, loss computed outside autocast in fp32: identical up to rounding.
    reference = loss_fn(logits.detach().float(), target)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    # And close to the all-fp32 forward pass (only the conv ran in bf16).
    full_precision = loss_fn(conv(image), target)
    assert loss.item() == pytest.approx(full_precision.item(), abs=2e-2)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", available_losses())
def test_gradients_flow_to_the_logits(name, num_classes, shape):
    target = random_target(shape, num_classes, seed=10)
    logits = torch.randn(shape[0], num_classes, *shape[1:], requires_grad=True)
    loss = build_loss(name, num_classes)(logits, target)
    assert loss.ndim == 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_build_loss_rejects_unknown_names_listing_the_choices():
    with pytest.raises(ConfigError) as error:
        build_loss("focal", 2)
    for name in ("adaptive", "dice_ce", "dice_ce_foreground", "ce", "dice"):
        assert name in str(error.value)
    with pytest.raises(ConfigError):
        build_loss("dice", 0)


def test_mismatched_shapes_are_reported():
    with pytest.raises(ValueError, match="crop the mask"):
        soft_dice_loss(torch.zeros(1, 2, 388, 388), torch.zeros(1, 572, 572, dtype=torch.long))


def test_a_model_of_objects_learns_their_area_and_keeps_its_own_boundaries():
    """--instances foreground: background / interior / boundary logits scored on a mask of the
    objects' area (1) and unlabelled pixels (IGNORE_CLASS): the loss is the 2-class loss of
    background against interior + boundary, and an object pixel's gradient raises interior
    and boundary in the proportion the model gives them (their split is kept)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    target[:, :2] = IGNORE_CLASS
    loss = build_loss("dice_ce", 3, masked=True, objects_area=True)
    value = loss(logits, target)
    merged = torch.stack([logits[:, 0], torch.logsumexp(logits[:, 1:], 1)], 1)
    assert torch.allclose(value, build_loss("dice_ce", 2, masked=True)(merged, target))
    assert set(loss.last_terms) == {"dice_loss", "ce"}
    value.backward()
    grad, p = logits.grad, torch.softmax(logits.detach(), 1)
    assert torch.all(grad[:, :, :2] == 0)  # unlabelled rows: no gradient at all
    inside = target == 1
    # interior and boundary gradients are in proportion to their probabilities: the split
    # between them gets no push of its own
    ratio_grad = grad[:, 1][inside] / grad[:, 2][inside]
    ratio_p = p[:, 1][inside] / p[:, 2][inside]
    assert torch.allclose(ratio_grad, ratio_p, rtol=1e-3)
    assert torch.all(grad[:, 1][inside] < 0) and torch.all(grad[:, 2][inside] < 0)
