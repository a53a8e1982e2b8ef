"""The gated ResNet's mechanics with no trained weights: what runs, what it costs, the batched
path, the sweep arithmetic, the training gate and the start from the early-exit backbone."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from models.block_skip import THRESHOLDS, GatedResNet, calibrate, gumbel_gate, sweep_blocks
from models.early_exit import EarlyExitResNet


@pytest.fixture(scope="module")
def model() -> GatedResNet:
    torch.manual_seed(0)
    m = GatedResNet().eval()
    with torch.no_grad():  # gates of blocks 1 and 3 say "skip", the others "run"
        for i, gate in enumerate(m.gates):
            gate.fc2.weight.zero_()
            gate.fc2.bias.fill_(-6.0 if i in (1, 3) else 6.0)
    return m


def block_calls(model: GatedResNet, fn) -> list[int]:
    """Which residual blocks really executed while ``fn`` ran, counted by forward hooks."""
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, b in enumerate(model.blocks)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return calls


def test_skipped_blocks_are_not_computed_at_batch_size_1(model):
    x = torch.randn(1, 3, 32, 32)
    trace = None

    def run():
        nonlocal trace
        trace = model.trace(x, threshold=0.5)

    assert block_calls(model, run) == [0, 2, 4, 5]
    assert trace.extras["executed"] == [True, False, True, False, True, True]
    blocks = [u for u in trace.units if u.kind == "block"]
    assert [u.flops > 0 for u in blocks] == trace.extras["executed"]
    saved = sum(u.full_flops - u.flops for u in blocks)
    assert trace.flops == model.max_flops - saved
    assert trace.flops < model.full_flops


def test_threshold_zero_is_the_static_network_without_gates(model):
    x = torch.randn(1, 3, 32, 32)
    trace = model.trace(x, threshold=0.0)
    assert trace.extras["executed"] == [True] * 6 and trace.extras["gate_probs"] == [None] * 6
    assert trace.flops == model.full_flops
    assert all(not u.executed and u.flops == 0 for u in trace.units if u.kind == "gate")


def test_batched_path_decides_and_predicts_like_batch_1(model):
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():  # gates that depend on the input, so the rows disagree
        for gate in model.gates:
            gate.fc2.weight.normal_(0, 3)
    try:
        for threshold in (0.0, 0.3, 0.5, 0.8):
            probs, ran, _ = model.forward_dynamic(x, threshold)
            for i in range(len(x)):
                trace = model.trace(x[i : i + 1], threshold=threshold)
                assert ran[i].tolist() == trace.extras["executed"]
                torch.testing.assert_close(probs[i], torch.from_numpy(trace.probs), atol=1e-4, rtol=1e-3)
    finally:
        with torch.no_grad():
            for gate in model.gates:
                gate.fc2.weight.zero_()


def test_sweep_arithmetic_on_known_decisions(model):
    n, t_count, blocks = 4, len(THRESHOLDS), 6
    executed = torch.ones(n, t_count, blocks, dtype=torch.bool)
    executed[:, 1:, 1] = False  # from the second threshold on, block 1 is skipped by everyone
    executed[0, 1:, :] = False  # and image 0 skips every block
    probs = torch.zeros(n, t_count, 10)
    probs[..., 0] = 1.0
    labels = torch.tensor([0, 0, 1, 1])
    table = sweep_blocks(model, probs, executed, labels, extremes=2)
    full, second = table["points"][0], table["points"][1]
    assert table["full"] == {"accuracy": 0.5, "mflops": model.full_flops / 1e6}
    assert full["blocks_histogram"] == [0] * 6 + [4]
    assert second["blocks_histogram"][0] == 1 and second["blocks_histogram"][5] == 3
    every_block = sum(model.flops[f"block{i}"] for i in range(blocks))
    gates = sum(model.flops[f"gate{i}"] for i in range(blocks))
    expected = (4 * (model.full_flops + gates) - 3 * model.flops["block1"] - every_block) / 4
    assert second["mflops"] == pytest.approx(expected / 1e6)
    assert second["block_rate"][1] == 0.0 and second["block_rate"][0] == 0.75
    assert second["class_block_rate"][0][0] == 0.5 and second["class_block_rate"][1][0] == 1.0
    assert second["cheapest"][0]["index"] == 0 and second["cheapest"][0]["correct"]
    assert {r["index"] for r in second["dearest"]} <= {1, 2, 3}


def test_calibration_takes_the_cheapest_point_within_a_point():
    table = {
        "full": {"accuracy": 0.90},
        "points": [
            {"value": 0.0, "accuracy": 0.90, "mflops": 300},
            {"value": 0.5, "accuracy": 0.893, "mflops": 200},
            {"value": 0.7, "accuracy": 0.85, "mflops": 150},
        ],
    }
    assert calibrate(table) == {"threshold": 0.5}


def test_gumbel_gate_is_hard_forward_and_soft_backward():
    logits = torch.tensor([-3.0, 0.0, 3.0] * 100, requires_grad=True)
    g = gumbel_gate(logits)
    hard = g.detach()
    assert torch.minimum(hard, 1 - hard).abs().max() < 1e-6  # 0 or 1 up to float rounding
    g.sum().backward()
    assert (logits.grad > 0).all()


def test_all_on_rows_run_every_block_in_training():
    torch.manual_seed(0)
    m = GatedResNet().train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    _, gates, gated = m.forward_train(x, all_on_share=1.0)
    assert not gated.any() and (gates == 1).all()
    loss, logs = m.training_loss(x, y, all_on_share=1.0)
    assert torch.isfinite(loss) and logs["rate"] == 1.0
    _, _, gated = m.forward_train(x, all_on_share=0.0)
    assert gated.all()


def test_starts_from_the_early_exit_backbone(tmp_path):
    ee = EarlyExitResNet()
    path = tmp_path / "early_exit.safetensors"
    save_file({k: v.contiguous() for k, v in ee.state_dict().items()}, str(path))
    gated = GatedResNet()
    report = gated.init_from(path)
    assert report["new"] == ["blocks.1", "blocks.3", "blocks.5", "gates.0", "gates.1", "gates.2", "gates.3",
                             "gates.4", "gates.5"]  # fmt: skip
    torch.testing.assert_close(gated.stem[1][0].weight, ee.stages[0][1][0].weight)
    torch.testing.assert_close(gated.blocks[4].body[0][0].weight, ee.stages[5].body[0][0].weight)
    torch.testing.assert_close(gated.head.fc.weight, ee.exits[-1].fc.weight)


def test_weights_of_another_shape_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="unexpected"):
        GatedResNet().init_from(path)
