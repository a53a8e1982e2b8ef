"""The pixel-masked ResNet's mechanics with no trained weights: the sparse block computes
exactly the masked dense residual, only kept positions are paid for, the batched path agrees
with the batch-1 path, and training starts from the gated ResNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.block_skip import GatedResNet
from models.cost import count_flops
from models.pixel_mask import THRESHOLDS, MaskedResidual, PixelMaskResNet, dilate, sweep_masks


@pytest.fixture(scope="module")
def model() -> PixelMaskResNet:
    torch.manual_seed(0)
    m = PixelMaskResNet().eval()
    with torch.no_grad():  # varied masks: random mask units centred on probability 0.5
        for unit in m.gates:
            unit.conv.weight.normal_(0, 0.05)
            unit.conv.bias.zero_()
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_the_sparse_block_equals_the_masked_dense_residual(density):
    torch.manual_seed(1)
    block = MaskedResidual(16).eval()
    x = torch.randn(1, 16, 8, 8)
    mask = torch.rand(8, 8) < density
    with torch.inference_mode():
        sparse = block(x, mask)
        dense = x + mask.float() * block.body(x)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def test_a_block_pays_for_the_grown_mask_then_the_mask():
    block = MaskedResidual(16).eval()
    x = torch.randn(1, 16, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2, 3] = mask[6, 6] = True
    per_position = 2 * 16 * 9 * 16  # one 3x3 conv, 16 -> 16 channels, at one position
    with torch.inference_mode():
        _, flops = count_flops(block, x, mask)
        _, dense = count_flops(block, x)
    assert flops == per_position * (int(dilate(mask).sum()) + 2) == per_position * (9 + 9 + 2)
    assert dense == per_position * 2 * 64


def test_dilate_grows_by_one_pixel_and_keeps_the_type():
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[0, 0] = True
    grown = dilate(mask)
    assert grown.dtype == torch.bool and grown.sum() == 4 and grown[:2, :2].all()
    assert dilate(mask.float()).dtype == torch.float32


def test_threshold_zero_is_the_dense_network_without_mask_units(model):
    x = torch.randn(1, 3, 32, 32)
    trace = model.trace(x, threshold=0.0)
    assert trace.flops == model.full_flops and trace.extras["masks"] == [None] * 6
    assert all(not u.executed and u.flops == 0 for u in trace.units if u.kind == "gate")
    assert trace.extras["conv_density"] == [1.0] * 6


def test_trace_flops_are_the_positions_each_block_computed(model):
    x = torch.randn(1, 3, 32, 32)
    trace = model.trace(x, threshold=0.5)
    masks = trace.extras["masks"]
    assert any(0 < m.mean() < 1 for m in masks)
    for i, unit in enumerate(u for u in trace.units if u.kind == "pixel"):
        m = torch.from_numpy(masks[i])
        positions = int(dilate(m).sum()) + int(m.sum()) if m.any() else 0
        assert unit.flops == model.conv_flops_per_position(i) * positions
        assert unit.executed == bool(m.any()) and (unit.decision == masks[i]).all()
    assert trace.flops < model.full_flops


def test_a_block_whose_mask_keeps_nothing_is_not_called(model):
    x = torch.randn(1, 3, 32, 32)
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, b in enumerate(model.blocks)]
    try:
        trace = model.trace(x, threshold=1.0)
    finally:
        for h in handles:
            h.remove()
    ran = [u.executed for u in trace.units if u.kind == "pixel"]
    assert calls == [i for i, r in enumerate(ran) if r]
    assert not all(ran)  # no probability of these random units reaches 1.0 everywhere


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7])
def test_the_batched_path_decides_as_the_batch_1_path(model, threshold):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 32, 32)
    probs, positions, density = model.forward_masked(x, threshold)
    for i in range(4):
        trace = model.trace(x[i : i + 1], threshold=threshold)
        np.testing.assert_allclose(probs[i].numpy(), trace.probs, atol=1e-4)
        sizes = [m**2 for m in (16, 16, 8, 8, 4, 4)]
        masks = trace.extras["masks"]
        kept = [int(m.sum()) for m in masks] if threshold else sizes
        assert positions[i, :, 1].tolist() == kept
        assert density[i].tolist() == pytest.approx([k / n for k, n in zip(kept, sizes, strict=True)])


def test_sweep_turns_positions_into_mean_mflops_and_shares(model):
    n, t, b = 2, len(THRESHOLDS), model.num_blocks
    sizes = torch.tensor([256, 256, 64, 64, 16, 16])
    positions = sizes[None, None, :, None].repeat(n, t, 1, 2)  # every position everywhere
    positions[0, 1:] = 0  # image 0 computes nothing once masks are on
    probs = torch.zeros(n, t, 10)
    probs[:, :, 3] = 1.0
    outputs = {"probs": probs, "positions": positions, "density": positions[..., 1] / sizes}
    table = sweep_masks(model, outputs, torch.tensor([3, 4]))
    assert table["full"]["mflops"] == model.full_flops / 1e6
    dense, masked = table["points"][0], table["points"][1]
    assert dense["mflops"] == pytest.approx(model.full_flops / 1e6) and dense["conv_share"] == 1.0
    gates = sum(model.flops[f"gate{i}"] for i in range(b)) / 1e6
    blocks = sum(model.flops[f"block{i}"] for i in range(b)) / 1e6
    assert masked["mflops"] == pytest.approx(model.full_flops / 1e6 - blocks / 2 + gates)
    assert masked["conv_share"] == pytest.approx(0.5) and masked["accuracy"] == 0.5
    assert masked["block_density"] == pytest.approx([0.5] * b)


def test_training_starts_from_the_gated_resnet_and_the_loss_reaches_the_mask_units(tmp_path):
    torch.manual_seed(0)
    donor = GatedResNet()
    path = tmp_path / "block_skip.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = PixelMaskResNet()
    new = model.init_from(path)["new"]
    assert new == [f"gates.{i}" for i in range(6)]
    torch.testing.assert_close(model.blocks[3].body[0][0].weight, donor.blocks[3].body[0][0].weight)
    model.train()
    loss, logs = model.training_loss(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), all_on_share=0.0)
    loss.backward()
    assert logs["cost"] > 0.7  # new mask units start by computing (bias +2)
    assert all(unit.conv.weight.grad.abs().sum() > 0 for unit in model.gates)


def test_top_pixels_are_only_those_attributed_above_zero():
    from models.attribution import agreement, top_share

    values = np.zeros((10, 10))
    values[7, 2], values[9, 9] = 0.5, 1.0  # 2 positive pixels, fewer than the top 20% (20)
    top = top_share(values, 0.2)
    assert top.sum() == 2 and top[7, 2] and top[9, 9]  # no zeros from the top rows
    mask = np.zeros((5, 5), bool)
    mask[4, 4] = True  # the block computed the bottom-right 2x2 pixels only
    agree = agreement(values, [mask], share=0.2)
    assert agree.inside == 0.5 and agree.chance == 0.04
    assert np.isnan(agreement(np.zeros((10, 10)), [mask]).inside)  # nothing attributed: no number


def test_two_maps_that_agree_overlap_fully_even_when_one_attributes_few_pixels():
    """A map with fewer pixels above zero than the top 20% (Grad-CAM after its ReLU) is compared
    with as many top pixels of the other: the same top pixels give an IoU of 1, not |A| / |B|."""
    from app.attribution import overlap

    few = np.zeros((10, 10))
    few.flat[:8] = np.linspace(1.0, 0.5, 8)  # 8 pixels above zero, fewer than 20 of 100
    many = np.full((10, 10), 0.1)
    many.flat[:8] = np.linspace(1.0, 0.5, 8)  # the same top 8, then every other pixel a little
    assert overlap(few, many) == 1.0
    shifted = np.roll(many, 50)  # its top 8 elsewhere
    assert overlap(few, shifted) == 0.0


def test_grad_cam_cells_are_drawn_over_the_pixels_they_are_centred_on():
    """A CNN's 8x8 cell (after 2x2 pooling) covers 4 pixels centred half-way (4j + 1.5); the
    transformer's stride-2 convolutions centre patch j on pixel 4j: its map is drawn there."""
    import torch

    from models.attribution import upsample

    cam = torch.zeros(1, 1, 8, 8)
    cam[0, 0, 3, 3] = 1.0
    peak = lambda m: np.unravel_index(int(m[0, 0].argmax()), m.shape[-2:])  # noqa: E731
    assert peak(upsample(cam, (32, 32))) in {(13, 13), (14, 14), (13, 14), (14, 13)}  # 4 * 3 + 1.5
    assert peak(upsample(cam, (32, 32), 0.0)) == (12, 12)  # 4 * 3
    flat = torch.ones(1, 1, 8, 8)
    assert torch.allclose(upsample(flat, (32, 32), 0.0), torch.ones(1, 1, 32, 32))  # the border holds
