"""The token-and-expert ViT's mechanics with random weights (no training): shed tokens are
really gone, EViT and ToMe counts, expert capacity and dropped tokens, attention FLOPs, exact
FLOP accounting, the static network, the balance loss and the batched path."""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest
import torch

from models.cost import count_flops
from models.vit import (
    KEEP_GRID,
    MERGE_GRID,
    NUM_EXPERTS,
    PATCHES,
    REDUCE_AT,
    STATIC,
    SWEEP_POLICIES,
    Policy,
    TokenExpertViT,
    Tokens,
    _take,
    balance_loss,
    cheapest_within,
    class_share,
    expert_capacity,
    gelu,
    kept_count,
    merge_tokens,
    prune_tokens,
    random_policy,
    token_counts,
    within_capacity,
)


@pytest.fixture(scope="module")
def model() -> TokenExpertViT:
    torch.manual_seed(0)
    return TokenExpertViT().eval()


@pytest.fixture(scope="module")
def one_expert(model) -> TokenExpertViT:
    """The model with every router sending every token to expert 0 first."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for block in m.blocks:
            if block.moe:
                block.ffn.router.weight.zero_()
                block.ffn.router.bias.copy_(torch.tensor([10.0, 0.0, -1.0, -2.0]))
    return m


def image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def tokens_seen(model: TokenExpertViT, fn) -> dict[str, list[int]]:
    """Tokens each block's attention and MLP really received while ``fn`` ran (pre-hooks)."""
    seen: dict[str, list[int]] = {"attn": [], "ffn": []}
    handles = []
    for block in model.blocks:
        handles.append(block.attn.register_forward_pre_hook(lambda _, args: seen["attn"].append(args[0].shape[1])))
        handles.append(block.ffn.register_forward_pre_hook(lambda _, args: seen["ffn"].append(args[0].shape[1])))
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen


def random_tokens(b: int = 2, n: int = PATCHES, dim: int = 8) -> Tokens:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, n + 1, dim, generator=gen)
    return Tokens.of(x, torch.ones(b, n + 1), torch.arange(1, n + 1).expand(b, -1))


def assert_bookkeeping(tokens: Tokens) -> None:
    """Every original patch is in exactly one patch token, and sizes count them."""
    for sizes, groups in zip(tokens.sizes, tokens.groups, strict=True):
        counts = torch.bincount(groups, minlength=len(sizes))
        assert counts[0] == 0 and torch.equal(counts[1:].float(), sizes[1:])
        assert sizes.sum() == PATCHES + 1


# --- tokens --------------------------------------------------------------------------------------


def test_pruned_tokens_are_gone_from_later_layers(model):
    trace = None

    def run():
        nonlocal trace
        trace = model.trace(image(), mode="prune", keep_ratio=0.5)

    seen = tokens_seen(model, run)
    # 64 patches -> 32 kept + 1 fused -> 17 + 1 -> 9 + 1, class token on top
    assert seen["attn"] == [65, 65, 34, 19, 11, 11]
    assert seen["ffn"] == [65, 34, 19, 11, 11, 11]
    assert trace.extras["tokens_attn"] == seen["attn"] and trace.extras["tokens_mlp"] == seen["ffn"]
    assert [list(c) for c in zip(seen["attn"], seen["ffn"], strict=True)] == [
        list(c) for c in token_counts(Policy(mode="prune", keep_ratio=0.5))
    ]


@pytest.mark.parametrize("policy", [Policy(mode="prune", keep_ratio=0.5), Policy(mode="merge", merge_r=8)])
def test_the_pass_leaves_the_token_maps_for_after_it(model, policy):
    """The timed pass computes what the prediction needs: which patches each token stands for
    is worked out when asked, from the indices the pass kept (ToMe's merging needs the sizes)."""
    _, records = model.run(image(), policy)
    books = [records[i].after.book for i in REDUCE_AT]
    assert all(callable(book._groups) for book in books)
    assert all(callable(book._sizes) for book in books) == (policy.mode == "prune")
    for i in REDUCE_AT:
        assert_bookkeeping(records[i].after)
        assert records[i].after.sizes.shape == records[i].after.x.shape[:2]
    assert not any(callable(book._groups) or callable(book._sizes) for book in books)  # worked out once, kept


@pytest.mark.parametrize("keep_ratio", [0.3, 0.5, 0.7, 0.75, 0.95, 0.97, 1.0])
def test_evit_keeps_the_top_share_and_fuses_the_rest_into_one_token(keep_ratio):
    tokens = random_tokens()
    cls_attn = torch.rand(2, 3, PATCHES + 1, generator=torch.Generator().manual_seed(2))
    out, flops = prune_tokens(tokens, cls_attn, keep_ratio)
    keep = math.ceil(round(keep_ratio * PATCHES, 6))
    assert kept_count(PATCHES, keep_ratio) == keep
    if PATCHES - keep < 2:  # fusing one token into itself changes nothing
        assert out is tokens and flops == 0
        return
    assert out.x.shape[1] == 1 + keep + 1 and flops == 2 * (PATCHES - keep) * tokens.x.shape[-1]
    score = cls_attn[:, :, 1:].mean(1)
    for b in range(2):
        top = score[b].topk(keep).indices + 1  # most attended first, as EViT's code orders them
        torch.testing.assert_close(out.x[b, 1:-1], tokens.x[b, top])
        rest = torch.ones(PATCHES + 1, dtype=torch.bool)
        rest[0], rest[top] = False, False
        weights = score[b][rest[1:]] / score[b][rest[1:]].sum()
        torch.testing.assert_close(out.x[b, -1], weights @ tokens.x[b, rest])
        assert torch.equal(out.groups[b, top - 1], torch.arange(1, keep + 1))  # each kept patch: its own token
        assert (out.groups[b, rest[1:]] == keep + 1).all()  # each pruned patch: the fused token
        assert out.sizes[b, -1] == PATCHES - keep  # the fused token stands for every pruned patch
    assert torch.equal(out.x[:, 0], tokens.x[:, 0])
    assert_bookkeeping(out)


@pytest.mark.parametrize("shape", [(3, 65), (3, 65, 8)])
def test_take_copies_rows_at_batch_1_as_gather_does_in_a_batch(shape):
    """``_take`` copies rows with ``index_select`` at batch 1 (the app's pass) and gathers with
    an expanded index in a batch: the same rows, to the bit, on a strided view too."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(*shape, generator=gen)[:, 1:]  # the patches of a token set: not contiguous
    idx = torch.stack([torch.randperm(64, generator=gen)[:40] for _ in range(3)])
    batch = _take(x, idx)
    expected = x.gather(1, idx.view(3, 40, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))
    assert torch.equal(batch, expected)
    for i in range(3):
        assert torch.equal(_take(x[i : i + 1], idx[i : i + 1])[0], expected[i])


@pytest.mark.parametrize("mode", ["prune", "merge"])
def test_one_image_is_reduced_bit_for_bit_as_in_a_batch(mode):
    """The app's batch-1 reduction gives each image the tokens, sizes and token maps the batched
    evaluation gives it, to the bit (rows copied by ``_take``'s two paths, the rest the same ops)."""
    gen = torch.Generator().manual_seed(3)
    tokens = random_tokens(b=3)
    sizes = torch.randint(1, 4, (3, PATCHES + 1), generator=gen).float()  # sizes other than 1, so merging weighs them
    tokens = Tokens.of(tokens.x, sizes, tokens.groups)  # (the maps do not match these sizes: not checked here)
    cls_attn = torch.rand(3, 4, PATCHES + 1, generator=gen)
    keys = torch.randn(3, 4, PATCHES + 1, 8, generator=gen)

    def reduce(t: Tokens, i: slice) -> Tokens:
        return prune_tokens(t, cls_attn[i], 0.55)[0] if mode == "prune" else merge_tokens(t, keys[i], 8)[0]

    batch = reduce(tokens, slice(None))
    for i in range(3):
        one = reduce(Tokens.of(tokens.x[i : i + 1], sizes[i : i + 1], tokens.groups[i : i + 1]), slice(i, i + 1))
        for field in ("x", "sizes", "groups"):
            assert torch.equal(getattr(one, field)[0], getattr(batch, field)[i]), (i, field)


def test_evit_keep_ratio_counts_use_the_ceiling():
    assert [kept_count(64, r) for r in (0.3, 0.5, 0.7, 0.75, 1.0)] == [20, 32, 45, 48, 64]


@pytest.mark.parametrize("r", [1, 5, 16])
def test_tome_removes_r_tokens_per_merging_layer(model, r):
    seen = tokens_seen(model, lambda: model.trace(image(), mode="merge", merge_r=r))
    assert seen["attn"] == [65, 65, 65 - r, 65 - 2 * r, 65 - 3 * r, 65 - 3 * r]
    assert seen["ffn"] == [65, 65 - r, 65 - 2 * r, 65 - 3 * r, 65 - 3 * r, 65 - 3 * r]


def test_tome_merges_the_most_similar_pair_as_a_size_weighted_average():
    tokens = random_tokens(b=1)
    tokens = Tokens.of(tokens.x, tokens.sizes.index_fill(1, torch.tensor([1]), 3.0), tokens.groups)
    keys = torch.randn(1, 3, PATCHES + 1, 4, generator=torch.Generator().manual_seed(3))
    keys[:, :, 1] = keys[:, :, 4]  # patch 0 (set A) and patch 3 (set B): identical keys
    out, flops = merge_tokens(tokens, keys, 1)
    assert out.x.shape[1] == PATCHES and flops == 2 * 32 * 32 * 4
    merged = out.groups[0, 0]
    assert out.groups[0, 3] == merged and out.sizes[0, merged] == 4.0
    torch.testing.assert_close(out.x[0, merged], (3 * tokens.x[0, 1] + tokens.x[0, 4]) / 4)


@pytest.mark.parametrize("policy", [Policy(mode="prune", keep_ratio=0.45), Policy(mode="merge", merge_r=11)])
def test_groups_and_sizes_track_every_patch(model, policy):
    with torch.no_grad():
        _, records = model.run(torch.cat([image(0), image(1)]), policy)
    for rec in records:
        assert_bookkeeping(rec.after)


def test_token_decisions_in_the_trace(model):
    trace = model.trace(image(), mode="prune", keep_ratio=0.5)
    units = {u.name: u for u in trace.units}
    kept = trace.extras["kept"]
    assert int(kept[1].sum()) == 32  # the rest fused into one token
    assert int(kept[3].sum()) <= 9 and len(np.unique(trace.extras["groups"][3])) == 10  # fused tokens may be kept
    decision = units["block1.tokens"].decision  # the kept mask over the 8x8 patches
    assert units["block1.tokens"].executed and decision.dtype == bool and np.array_equal(decision, kept[1])
    merged = model.trace(image(), mode="merge", merge_r=6)
    groups = {u.name: u for u in merged.units}["block2.tokens"].decision  # merge groups
    assert groups.shape == (8, 8) and len(np.unique(groups)) == 64 - 12
    attn = trace.extras["cls_attention"][0]
    assert attn.shape == (8, 8) and 0 < attn.sum() < 1
    static = model.trace(image(), **model.static_knobs)
    assert all(not u.executed and u.flops == 0 for u in static.units if u.kind == "token")


# --- experts -------------------------------------------------------------------------------------


def test_capacity_is_ceil_c_k_n_over_e():
    assert expert_capacity(65, 1, 1.0) == 17
    assert expert_capacity(65, 2, 1.0) == 33
    assert expert_capacity(64, 2, 1.0) == 32
    assert expert_capacity(65, 2, 2.0) == 65


def test_batch_prioritised_routing_serves_first_choices_first():
    chosen = torch.tensor([[[0, 1], [0, 1], [1, 0], [1, 0]]])
    served = within_capacity(chosen, torch.tensor([[0.1, 0.9, 0.5, 0.6]]), 2, NUM_EXPERTS)
    assert served[0, :, 0].all() and not served[0, :, 1].any()
    served = within_capacity(chosen, torch.tensor([[0.1, 0.9, 0.5, 0.6]]), 1, NUM_EXPERTS)
    assert served[0, :, 0].tolist() == [False, True, False, True]  # the surer token of each expert


@pytest.mark.parametrize(("top_k", "capacity"), [(1, 4.0), (2, 4.0), (2, 0.5), (3, 0.75), (4, 4.0), (4, 0.25)])
def test_experts_add_each_served_choice_once_with_its_gate(model, top_k, capacity):
    """The batched dispatch (sorted by expert, one gather, one ``index_add_``) against a loop
    over every token and choice."""
    moe = model.blocks[2].ffn
    x = torch.randn(2, 23, moe.norm.normalized_shape[0], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, routing = moe(x, top_k=top_k, capacity=capacity)
        h = moe.norm(x)
        expected = x.clone()
        gates = routing.probs.gather(-1, routing.chosen)
        for b, t, j in zip(*torch.nonzero(routing.served, as_tuple=True), strict=True):
            expert = moe.experts[int(routing.chosen[b, t, j])]
            expected[b, t] += gates[b, t, j] * expert(h[b, t][None])[0]
    torch.testing.assert_close(out, expected)
    assert (capacity < 1) == (not routing.served.all())  # the small capacities do drop choices


def test_overflow_tokens_are_dropped_and_skip_the_mlp(one_expert):
    calls = {}
    moe = one_expert.blocks[2].ffn
    handles = [
        e.register_forward_pre_hook(lambda _, args, i=i: calls.__setitem__(i, args[0].shape[0]))
        for i, e in enumerate(moe.experts)
    ]
    try:
        trace, counted = count_flops(one_expert.trace, image(), mode="none", top_k=1, capacity=1.0)
    finally:
        for h in handles:
            h.remove()
    assert calls == {0: 17}  # ceil(1 * 1 * 65 / 4); the idle experts were not called
    decision = {u.name: u for u in trace.units}["block2.experts"].decision
    assert decision.shape == (65, 1) and (decision == 0).sum() == 17 and (decision == -1).sum() == 48
    record = trace.extras["moe"][0]
    assert record["demand"] == [65, 0, 0, 0] and record["load"] == [17, 0, 0, 0]
    assert record["dropped_tokens"] == 48 and record["capacity"] == 17
    assert counted == trace.flops
    x = torch.randn(1, 65, moe.norm.normalized_shape[0])
    with torch.no_grad():
        out, routing = moe(x, top_k=1, capacity=1.0)
    dropped = routing.experts[0, :, 0] < 0
    assert torch.equal(out[0, dropped], x[0, dropped]) and not torch.equal(out[0, ~dropped], x[0, ~dropped])


def test_second_choices_fill_other_experts_when_the_first_is_full(one_expert):
    trace = one_expert.trace(image(), mode="none", top_k=2, capacity=1.0)
    record = trace.extras["moe"][0]
    # ceil(1 * 2 * 65 / 4) = 33 per expert; equal priorities: the first 33 tokens get both experts
    assert record["load"] == [33, 33, 0, 0] and record["demand"] == [65, 65, 0, 0]
    assert record["dropped_choices"] == 64 and record["dropped_tokens"] == 32


def test_balance_loss_is_zero_for_uniform_routing_and_positive_otherwise():
    uniform = torch.zeros(100, NUM_EXPERTS)
    for k in (1, 2, NUM_EXPERTS):
        assert balance_loss(uniform, uniform, k, 0.25).item() == pytest.approx(0.0, abs=1e-9)
    gen = torch.Generator().manual_seed(0)
    skewed = torch.randn(100, NUM_EXPERTS, generator=gen) + torch.tensor([3.0, 0.0, 0.0, 0.0])
    noisy = skewed + 0.25 * torch.randn(100, NUM_EXPERTS, generator=gen)
    assert balance_loss(skewed, noisy, 2, 0.25).item() > 0.1
    assert balance_loss(skewed, noisy, 2, 0.25) > balance_loss(skewed / 10, noisy / 10, 2, 0.25)


# --- cost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [65, 30, 7])
def test_attention_flops_are_counted_and_not_zero(model, n):
    attn = model.blocks[0].attn
    dim = attn.proj.in_features
    x = torch.randn(1, n, dim)
    with torch.no_grad():
        _, total = count_flops(attn, x)
        _, qkv = count_flops(attn.qkv, x)
        _, proj = count_flops(attn.proj, x)
    assert total == attn.flops(n)
    assert total - qkv - proj == 4 * n * n * dim > 0  # QK^T and AV


@pytest.mark.parametrize(
    "knobs",
    [
        {"mode": "none"},
        {"mode": "prune", "keep_ratio": 0.42},
        {"mode": "merge", "merge_r": 13},
        {"mode": "none", "top_k": 1, "capacity": 0.5},
        {"mode": "merge", "merge_r": 5, "top_k": 4, "capacity": 0.75},
        {"mode": "prune", "keep_ratio": 0.8, "top_k": 3, "capacity": 0.25},
    ],
)
def test_trace_flops_equal_a_flop_counter_count(model, knobs):
    trace, counted = count_flops(model.trace, image(3), **knobs)
    assert trace.flops == counted == sum(u.flops for u in trace.units)
    assert trace.flops <= model.max_flops


def test_cost_is_monotone_in_keep_ratio_and_merge_r(model):
    x = image(4)
    prune = [model.trace(x, mode="prune", keep_ratio=v).flops for v in KEEP_GRID]
    merge = [model.trace(x, mode="merge", merge_r=r).flops for r in range(0, 17)]
    assert prune == sorted(prune) and prune[-1] == model.full_flops and prune[0] < 0.45 * model.full_flops
    assert merge == sorted(merge, reverse=True) and merge[0] == model.full_flops
    assert model.trace(x, mode="prune", keep_ratio=0.7).flops < 0.7 * model.full_flops


def test_static_knobs_give_the_forward_pass(model):
    for seed in range(3):
        x = image(seed)
        trace = model.trace(x, **model.static_knobs)
        with torch.no_grad():
            static = model(x).softmax(-1)[0].numpy()
        np.testing.assert_allclose(trace.probs, static, atol=1e-6)
        assert trace.prediction == int(static.argmax()) and trace.flops == model.full_flops
        assert trace.extras["tokens_mlp"] == [65] * 6
        assert all(r["dropped_choices"] == 0 for r in trace.extras["moe"])


# --- batched path and tables ---------------------------------------------------------------------


def test_batched_path_matches_batch_1(model):
    x = torch.cat([image(5), image(6), image(7)])
    out = model.evaluate_batch(x)
    assert out["probs"].shape == (3, len(SWEEP_POLICIES), 10)
    for policy in (STATIC, Policy(mode="prune", keep_ratio=0.55), Policy(mode="merge", merge_r=10)):
        s = SWEEP_POLICIES.index(policy)
        knobs = {"mode": policy.mode, "keep_ratio": policy.keep_ratio, "merge_r": policy.merge_r}
        for i in range(3):
            trace = model.trace(x[i : i + 1], **knobs, top_k=policy.top_k, capacity=policy.capacity)
            np.testing.assert_allclose(out["probs"][i, s].numpy(), trace.probs, atol=1e-5)
            assert int(out["flops"][i, s]) == trace.flops


def test_sweep_table_and_defaults(model):
    x = torch.cat([image(i) for i in range(4)])
    out = model.evaluate_batch(x)
    labels = out["probs"][:, SWEEP_POLICIES.index(STATIC)].argmax(-1)
    table = model.sweep(out, labels)
    assert table["knob"] == model.cost_knob and table["full"] == {"accuracy": 1.0, "mflops": model.full_flops / 1e6}
    assert [p["value"] for p in table["points"]] == list(KEEP_GRID)
    assert [p["value"] for p in table["curves"]["merge"]["points"]] == [float(r) for r in MERGE_GRID]
    mflops = [p["mflops"] for p in table["points"]]
    assert mflops == sorted(mflops) and table["points"][-1]["accuracy"] == 1.0
    capacity = table["curves"]["capacity"]["points"]
    assert capacity[0]["dropped_share"] > 0 and capacity[-1]["dropped_share"] == 0
    defaults = model.calibrate(table)
    assert defaults["mode"] == "prune" and model.knob_values(**defaults)
    summary = model.summarise({**table, "default_knobs": defaults}, table)
    assert summary["prune_at_30pct_saving"]["flops_saving"] >= 0.3


def test_within_picks_the_cheapest_setting_close_enough_on_validation():
    def points(accuracies):
        return [{"value": v, "accuracy": a, "mflops": 100 * v} for v, a in accuracies]

    full = {"accuracy": 0.85, "mflops": 100.0}
    val = points([(0.3, 0.80), (0.5, 0.835), (0.7, 0.84), (1.0, 0.85)])  # 0.5: 1.5 points down, inclusive
    test = points([(0.3, 0.70), (0.5, 0.81), (0.7, 0.845), (1.0, 0.85)])
    got = cheapest_within(test, full, val, full, 1.5)
    assert got["value"] == 0.5  # chosen on validation; its test drop reported as measured
    assert got["drop_points"] == pytest.approx(4.0) and got["flops_saving"] == pytest.approx(0.5)
    assert cheapest_within(test, full, val, full, 1.0)["value"] == 0.7
    assert cheapest_within(test, full, val[:1], full, 1.5) is None


def test_random_policy_prunes_up_to_keep_max():
    torch.manual_seed(0)
    keeps = [p.keep_ratio for p in (random_policy(1.0, keep_max=0.6) for _ in range(400)) if p.mode == "prune"]
    assert len(keeps) > 100 and min(keeps) >= KEEP_GRID[0] and 0.55 < max(keeps) <= 0.6
    assert all(random_policy(0.0, keep_max=0.6) == STATIC for _ in range(20))
    for outside in (0.2, 1.5):  # the slider's range is 0.3-1
        with pytest.raises(ValueError, match="keep_max"):
            random_policy(1.0, keep_max=outside)


@pytest.mark.parametrize("shape", [(1, 512), (7, 512), (2, 23, 512), (3, 1, 512), (4, 5)])
def test_gelu_is_torchs_exact_gelu_in_the_same_layout(shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4).requires_grad_()
    y = gelu(x)
    ref = torch.nn.functional.gelu(x)
    assert y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, torch.autograd.grad(ref.sum(), x)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 512), (7, 512), (2, 23, 512), (3, 1, 512)])
def test_gelu_hands_aten_a_view_that_onednn_would_not_take(shape):
    """ATen passes a contiguous float32 CPU input to oneDNN (``use_mkldnn`` in
    Activation.cpp); the view keeps a batch-1 expert's few rows, even one, on ATen's kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Inputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.gelu:
                seen.append(args[0].is_contiguous())
            return func(*args, **(kwargs or {}))

    with Inputs():
        gelu(torch.randn(shape))
    assert seen == [False]


def test_training_loss_reaches_the_router(model):
    m = copy.deepcopy(model).train()
    torch.manual_seed(0)
    loss, logs = m.training_loss(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), reduce_share=1.0)
    loss.backward()
    assert math.isfinite(logs["balance"]) and math.isfinite(logs["ce"])
    assert all(b.ffn.router.weight.grad.abs().sum() > 0 for b in m.blocks if b.moe)


def test_class_share_splits_each_class_served_choices_over_its_experts():
    load = torch.tensor([[[3, 1, 0, 0]], [[1, 1, 1, 1]], [[0, 0, 0, 8]]])  # (N=3, L=1, E=4)
    share = class_share(load, torch.tensor([0, 0, 2]), num_classes=3)
    assert share.shape == (3, 1, 4)
    assert torch.allclose(share[0, 0], torch.tensor([4, 2, 1, 1], dtype=torch.float64) / 8)
    assert share[1].sum() == 0  # no image of class 1
    assert torch.equal(share[2, 0], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("knobs", "static"),
    [
        ({"mode": "none", "keep_ratio": 0.5, "merge_r": 8}, True),  # knobs the mode does not use
        ({"mode": "prune", "keep_ratio": 0.97}, True),  # keeps all 64 patches: nothing to fuse
        ({"mode": "prune", "keep_ratio": 0.9}, False),
        ({"mode": "merge", "merge_r": 0}, True),
        ({"mode": "merge", "merge_r": 1}, False),
        ({"mode": "none", "top_k": 1}, False),
        ({"mode": "none", "capacity": 1.0}, False),
    ],
)
def test_runs_static_knows_settings_that_shed_nothing(model, knobs, static):
    assert model.runs_static(**{"top_k": STATIC.top_k, "capacity": STATIC.capacity} | knobs) is static
    if static:
        x = image()
        assert model.trace(x, **knobs).flops == model.trace(x, **model.static_knobs).flops


def test_token_counts_shared_by_lines_are_written_once_and_close_ones_apart():
    """The token-count chart: lines that agree (every line before the first reduction) must not
    write their counts on top of each other, and close counts go on either side of their
    markers, also when the close pair is not the block's lowest (four lines: the page's own
    setting, every token, and prune and merge at a matched budget)."""
    from components.figures import token_count_labels

    every, prune, merge, own = [65] * 4, [65, 54, 45, 50], [65, 53, 45, 38], [65, 40, 30, 49]
    labels = token_count_labels([every, prune, merge, own])
    for block in range(4):
        written = [text[block] for text, _ in labels if text[block]]
        assert sorted(written) == sorted({str(v[block]) for v in (every, prune, merge, own)})  # each count once
    where = {v[b]: labels[i][1][b] for b in range(4) for i, v in enumerate((every, prune, merge, own))}
    assert where[54] == "top center" and where[53] == "bottom center"  # a close pair at block 2
    assert (labels[1][1][3], labels[3][1][3]) == ("top center", "bottom center")  # 50 over 49, though 38 is lowest
    assert labels[2][1][3] == "top center"  # 38: far from 49
    assert labels[0][1] == ["top center"] * 4  # every token: the highest line


def test_a_knob_sweep_marks_only_a_setting_it_measured_and_keeps_small_accuracy_gaps_small():
    from components.figures import ACCURACY_SPAN, FIRED, make_knob_sweep

    points = [{"value": c, "dropped_share": 0.5 / c, "accuracy": 0.805 + 0.001 * c} for c in (0.5, 1.0, 2.0)]
    sweep = partial(make_knob_sweep, points, knob_label="C", bar_key="dropped_share", bar_label="% dropped")
    colours = sweep(current=1.0).data[0].marker.color
    assert [c == FIRED for c in colours] == [False, True, False]
    assert FIRED not in sweep(current=4.0).data[0].marker.color  # past the sweep: marks nothing, not C = 2
    assert FIRED not in sweep(current=None).data[0].marker.color
    low, high = sweep(current=1.0).layout.yaxis2.range
    assert high - low == pytest.approx(ACCURACY_SPAN) and low < 80.55 < 80.7 < high  # 0.15 points, in a 2-point axis
