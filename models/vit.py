"""A small vision transformer: input-adaptive inference over tokens and experts.

Papers: ViT (Dosovitskiy et al., ICLR 2021, arXiv:2010.11929) with a convolutional stem
(Xiao et al., "Early convolutions help transformers see better", NeurIPS 2021,
arXiv:2106.14881); V-MoE (Riquelme et al., NeurIPS 2021, arXiv:2106.05974) with the capacity
factor of Switch Transformers (Fedus et al., JMLR 2022, arXiv:2101.03961) and the noisy top-k
load loss of Shazeer et al. (ICLR 2017, arXiv:1701.06538); EViT (Liang et al., ICLR 2022,
arXiv:2202.07800); ToMe (Bolya et al., ICLR 2023, arXiv:2210.09461, following
facebookresearch/ToMe's ``bipartite_soft_matching``).

The network: two stride-2 3x3 conv-BN-ReLU layers (32x32 -> 8x8) and a 1x1 convolution to 128
channels make 64 patch tokens; a class token and a learned position embedding join
them; six pre-norm transformer blocks (4 heads of 32, explicit matmul attention so that
FlopCounterMode counts it) follow, and a linear head reads the class token. The MLPs of blocks
2 and 4 are mixtures of 4 experts (V-MoE): a linear router, softmax, top-k, and per expert a
buffer of ``ceil(C * k * N / E)`` tokens per image (N tokens, capacity factor C). Tokens are
served in V-MoE's batch-prioritised order (every token's first choice before any second choice,
surer tokens first); a choice that finds its expert full is dropped, and a token with all its
choices dropped skips the MLP (the residual carries it on).

At inference the same model can shed tokens after the attention of blocks 1, 2 and 3 (the
reduced set goes on to the block's MLP and every later block, really smaller):

* ``prune`` (EViT): keep the ``ceil(keep_ratio * n)`` patch tokens the class token attends to
  most and fuse the rest into one token, their attention-weighted average (EViT's code uses the
  unnormalised sum). Pruning fewer than two tokens would fuse one token into itself: no-op.
* ``merge`` (ToMe): bipartite soft matching on the attention keys merges ``merge_r`` tokens per
  layer into their most similar partners (size-weighted averages); merged tokens then attend
  with ToMe's proportional attention.

Knobs and the contracts (``tests/models/test_contract.py``). The cost knob is ``keep_ratio``
(raising it never lowers the cost) and the default ``mode`` is ``prune``, so the cost knob's
slider is live on the default page and its curve is the eval table's ``points``. ``merge_r`` is
a knob of its own, monotone the other way (more merged tokens, less compute), with its own eval
curve (``curves.merge``); ``keep_ratio`` does nothing in ``merge`` or ``none`` mode and
``merge_r`` nothing outside ``merge``. One knob cannot honestly be both: a keep ratio is not a
number of merged tokens. ``top_k`` and ``capacity`` drive the experts; the default capacity
``C = E`` can never overflow, so the default cost depends on the token knobs only. The static
setting (``mode=none``, ``top_k=2``, ``capacity=4``) is what :meth:`forward` runs: no token is
shed and no expert choice is dropped, so its cost is the same on every input.

Training (``models.train``): cross-entropy plus V-MoE's auxiliary losses (importance and load,
each the squared coefficient of variation over the experts, with router noise of std 1/E); on a
share of the steps a random keep ratio (at most ``keep_max``) or merge count, so the weights
serve every slider value.

The pass computes what the prediction needs. Which original patches each token stands for (the
token maps) is bookkeeping: a reduction records the indices it chose and leaves the maps to be
worked out when first asked for (:class:`Book`), after the timed pass. Pruning defers the
tokens' sizes too; merging computes them in the pass, as its proportional attention reads them.

FLOPs per unit are computed from the shapes that ran (closed forms of the matmuls, checked
against FlopCounterMode by the tests): cost depends on the input only through the expert loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core import Curve, DynamicModel, Explained, Knob, Trace, Unit, register, timed
from models.cost import count_flops

GRID = 8  # patch tokens per side
PATCHES = GRID * GRID
REDUCE_AT = (1, 2, 3)  # blocks whose tokens may be pruned or merged (after their attention)
MOE_AT = (2, 4)  # blocks whose MLP is a mixture of experts
NUM_EXPERTS = 4
STATIC_TOP_K = 2  # V-MoE's k
NO_DROP_CAPACITY = float(NUM_EXPERTS)  # C = E: an expert's buffer holds every token
MODES = ("none", "prune", "merge")
MODE_LABELS = ("none: every token", "prune by class attention (EViT)", "merge similar tokens (ToMe)")
MAX_MERGE = PATCHES // (len(REDUCE_AT) + 1)  # 16: the last merging layer can still merge r (at most half)
Lazy = torch.Tensor | Callable[[], torch.Tensor]  # a value, or the function that works it out


@dataclass(frozen=True)
class Policy:
    """One setting of the dynamic decisions: the knobs, typed."""

    mode: str = "none"
    keep_ratio: float = 1.0
    merge_r: int = 0
    top_k: int = STATIC_TOP_K
    capacity: float = NO_DROP_CAPACITY

    @classmethod
    def from_knobs(cls, values: dict[str, Any]) -> Policy:
        return cls(
            mode=values["mode"], keep_ratio=float(values["keep_ratio"]), merge_r=round(values["merge_r"]),
            top_k=round(values["top_k"]), capacity=float(values["capacity"]),
        )  # fmt: skip


STATIC = Policy()


class Book:
    """Which original patches a token set stands for: each value given, or a function that works
    it out on first use (then kept).

    The pictures need it; the prediction does not, except ToMe's proportional attention, which
    reads the sizes. So a reduction hands over what the pass needs and defers the rest: the
    timed pass (:func:`models.core.timed`) then times what the prediction computes, and the
    token maps are worked out after it, from the indices it kept.
    """

    __slots__ = ("_groups", "_sizes")

    def __init__(self, sizes: Lazy, groups: Lazy) -> None:
        self._sizes, self._groups = sizes, groups

    @property
    def sizes(self) -> torch.Tensor:
        if callable(self._sizes):
            self._sizes = self._sizes()
        return self._sizes

    @property
    def groups(self) -> torch.Tensor:
        if callable(self._groups):
            self._groups = self._groups()
        return self._groups


@dataclass(frozen=True)
class Tokens:
    """The token set between layers, class token first.

    Attributes:
        x: ``(B, N, D)`` features.
        book: its :class:`Book`, shared by the token sets that differ only in ``x``.
    """

    x: torch.Tensor
    book: Book

    @classmethod
    def of(cls, x: torch.Tensor, sizes: Lazy, groups: Lazy) -> Tokens:
        return cls(x, Book(sizes, groups))

    @property
    def sizes(self) -> torch.Tensor:
        """``(B, N)`` how many original patches each token stands for (class token: 1)."""
        return self.book.sizes

    @property
    def groups(self) -> torch.Tensor:
        """``(B, P)`` the token (an index into N) each original patch is now part of."""
        return self.book.groups


# --- token counts and reductions ---------------------------------------------------------------


def kept_count(n: int, keep_ratio: float) -> int:
    """EViT: patch tokens kept of ``n`` (the float guard keeps 0.75 * 64 at 48, not 49)."""
    return min(n, math.ceil(keep_ratio * n - 1e-9))


def merge_count(n: int, r: int) -> int:
    """ToMe: tokens merged of ``n`` patch tokens; at most half, as in ToMe."""
    return min(r, n // 2)


def reduced_patches(n: int, policy: Policy) -> int:
    """Patch tokens left after one reduction layer under ``policy``."""
    if policy.mode == "prune":
        keep = kept_count(n, policy.keep_ratio)
        return n if n - keep < 2 else keep + 1  # the fused token
    if policy.mode == "merge":
        return n - merge_count(n, policy.merge_r)
    return n


def token_counts(policy: Policy, depth: int = 6) -> list[tuple[int, int]]:
    """Tokens (class token included) entering each block's attention and its MLP."""
    counts, n = [], PATCHES
    for i in range(depth):
        before = n
        if i in REDUCE_AT:
            n = reduced_patches(n, policy)
        counts.append((before + 1, n + 1))
    return counts


def _remap(tokens: Tokens, x: torch.Tensor, sizes: Lazy, index: Callable[[], torch.Tensor]) -> Tokens:
    """The new token set; ``index()`` ``(B, N_old)`` says where each old token went."""
    return Tokens.of(x, sizes, lambda: index().gather(1, tokens.groups))


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` ``(B, M)`` of ``x`` ``(B, N, ...)``.

    At batch 1 (the app's pass) a row copy, ``index_select``: the same values as ``gather``
    with an expanded index, which walks the index element by element and took about three
    times as long for a token set (26 vs 9 µs; HISTORY.md, stop 26).
    """
    if idx.shape[0] == 1:
        return x.index_select(1, idx[0])
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))


def prune_tokens(tokens: Tokens, cls_attn: torch.Tensor, keep_ratio: float) -> tuple[Tokens, int]:
    """EViT's token reorganisation: keep the most attended patch tokens, fuse the rest.

    Args:
        tokens: the block's tokens after attention, ``N = 1 + n``.
        cls_attn: ``(B, H, N)`` the class token's attention over all tokens, per head.
        keep_ratio: the share of patch tokens kept.

    Returns:
        ``1 + keep + 1`` tokens (class; the kept ones, most attended first, in the order of
        EViT's code; fused) and the FLOPs per image.
    """
    x = tokens.x
    b, n_all, dim = x.shape
    n = n_all - 1
    keep = kept_count(n, keep_ratio)
    if n - keep < 2:
        return tokens, 0
    # (B, n) the class token's attention summed over the heads: H times their mean, exactly with
    # the model's 4 heads (a power of two), so the same order and, once normalised, the same
    # fusion weights, one op fewer; ranked, best first (topk over all n: one call for the
    # scores and their order, faster than a sort at batch 1)
    score, order = cls_attn[:, :, 1:].sum(1).topk(n, dim=1)
    weight = score[:, keep:]  # the pruned tokens' scores
    weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)  # all-zero attention fuses to zero, not NaN
    ranked = _take(x[:, 1:], order)  # (B, n, D) one row copy for the kept and the pruned tokens
    fused = torch.bmm(weight[:, None, :].to(x.dtype), ranked[:, keep:])  # (B, 1, D)
    new_x = torch.cat([x[:, :1], ranked[:, :keep], fused], dim=1)  # (B, keep + 2, D)

    def sizes() -> torch.Tensor:
        old = _take(tokens.sizes[:, 1:], order)
        return torch.cat([tokens.sizes[:, :1], old[:, :keep], old[:, keep:].sum(1, keepdim=True)], dim=1)

    def index() -> torch.Tensor:
        index = torch.full((b, n_all), keep + 1, dtype=torch.long, device=x.device)  # pruned tokens -> the fused one
        index[:, 0] = 0
        return index.scatter_(1, order[:, :keep] + 1, torch.arange(1, keep + 1, device=x.device).expand(b, -1))

    flops = 2 * (n - keep) * dim  # the fusion's bmm
    return _remap(tokens, new_x, sizes, index), flops


def merge_tokens(tokens: Tokens, keys: torch.Tensor, r: int) -> tuple[Tokens, int]:
    """ToMe's bipartite soft matching: merge ``r`` patch tokens into their nearest partners.

    Patch tokens alternate between sets A and B; each A token finds its most similar B token
    (cosine similarity of the head-averaged keys); the ``r`` most similar pairs merge, as the
    size-weighted average. The class token is never merged.

    Args:
        tokens: the block's tokens after attention, ``N = 1 + n``.
        keys: ``(B, H, N, d)`` the attention keys.
        r: tokens to merge (at most ``n // 2``).

    Returns:
        ``N - r`` tokens (class, unmerged A in old order, B) and the FLOPs per image.
    """
    x, sizes = tokens.x, tokens.sizes
    b, n_all, dim = x.shape
    n = n_all - 1
    r = merge_count(n, r)
    if r == 0:
        return tokens, 0
    metric = keys[:, :, 1:].mean(1)  # (B, n, d)
    metric = F.normalize(metric, dim=-1)  # cosine similarity (ToMe); a zero key stays zero, not NaN
    a, bset = metric[:, ::2], metric[:, 1::2]
    scores = a @ bset.transpose(1, 2)  # (B, na, nb)
    na, nb = scores.shape[1:]
    best, partner = scores.max(dim=-1)  # (B, na)
    edges = best.argsort(dim=-1, descending=True)
    src = edges[:, :r]  # (B, r) A tokens that merge
    unmerged = edges[:, r:].sort(dim=-1).values  # (B, na - r)
    dst = partner.gather(1, src)  # (B, r) their B partners
    weighted = x[:, 1:] * sizes[:, 1:, None]  # merge sums, then divides by the new size
    xa, xb = weighted[:, ::2], weighted[:, 1::2]
    sa, sb = sizes[:, 1::2], sizes[:, 2::2]
    xb = xb.scatter_add(1, dst[..., None].expand(-1, -1, dim), _take(xa, src))
    sb = sb.scatter_add(1, dst, _take(sa, src))
    patch_sizes = torch.cat([_take(sa, unmerged), sb], dim=1)  # (B, n - r)
    patches = torch.cat([_take(xa, unmerged), xb], dim=1) / patch_sizes[..., None]
    new_x = torch.cat([x[:, :1], patches.to(x.dtype)], dim=1)
    new_sizes = torch.cat([sizes[:, :1], patch_sizes], dim=1)
    kept = na - r

    def index() -> torch.Tensor:
        a_index = torch.empty(b, na, dtype=torch.long, device=x.device)
        a_index.scatter_(1, unmerged, torch.arange(1, kept + 1, device=x.device).expand(b, -1))
        a_index.scatter_(1, src, dst + 1 + kept)
        index = torch.zeros(b, n_all, dtype=torch.long, device=x.device)
        index[:, 1::2] = a_index
        index[:, 2::2] = torch.arange(1 + kept, 1 + kept + nb, device=x.device)
        return index

    flops = 2 * na * nb * metric.shape[-1]  # the similarity bmm
    return _remap(tokens, new_x, new_sizes, index), flops


# --- experts -----------------------------------------------------------------------------------


def expert_capacity(n: int, top_k: int, capacity: float, num_experts: int = NUM_EXPERTS) -> int:
    """Tokens an expert takes per image: ``ceil(C * k * N / E)`` (the float guard keeps exact
    products exact)."""
    return math.ceil(capacity * top_k * n / num_experts - 1e-9)


def within_capacity(chosen: torch.Tensor, priority: torch.Tensor, cap: int, num_experts: int) -> torch.Tensor:
    """V-MoE's batch-prioritised routing: which expert choices fit in their expert's buffer.

    Every token's first choice is served before any second choice; within a round, tokens with
    a higher ``priority`` (their top gate value) go first.

    Args:
        chosen: ``(B, N, k)`` expert ids, best first.
        priority: ``(B, N)`` the order in which tokens are served, highest first.
        cap: buffer size of each expert, per image.

    Returns:
        ``(B, N, k)`` bool: the choice is served.
    """
    b, n, k = chosen.shape
    order = priority.argsort(dim=1, descending=True, stable=True)  # (B, N)
    ranked = _take(chosen, order)  # (B, N, k) in serving order
    slots = ranked.transpose(1, 2).reshape(b, k * n)  # round 1 (first choices), round 2, ...
    onehot = F.one_hot(slots, num_experts)  # (B, kN, E)
    position = (onehot.cumsum(1) * onehot).sum(-1) - 1  # place in its expert's buffer
    fits = (position < cap).view(b, k, n).transpose(1, 2)  # (B, N, k) in serving order
    return torch.empty_like(fits).scatter_(1, order[..., None].expand(-1, -1, k), fits)


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation over the last axis: 0 when all values are equal."""
    return values.var(-1, unbiased=False) / (values.mean(-1) ** 2 + 1e-10)


def balance_loss(logits: torch.Tensor, noisy: torch.Tensor, top_k: int, noise: float) -> torch.Tensor:
    """V-MoE's auxiliary loss: the mean of the importance and load losses.

    Importance: the router's softmax summed over tokens, per expert. Load: the probability that
    an expert is among a token's top k under a new draw of its noise, given the other noisy
    logits (Shazeer et al.), summed over tokens. Each loss is the squared coefficient of
    variation over the experts, so both are 0 exactly when routing is uniform.

    Args:
        logits: ``(T, E)`` clean router logits.
        noisy: ``(T, E)`` the same plus noise of std ``noise`` (what top-k saw).
    """
    importance = cv_squared(noisy.softmax(-1).sum(0))
    num_experts = logits.shape[-1]
    if top_k >= num_experts:  # every expert takes every token: nothing to balance
        return 0.5 * importance
    top = noisy.topk(top_k + 1, dim=-1).values  # (T, k + 1)
    in_top = noisy >= top[:, top_k - 1 : top_k]
    # the k-th largest of the *other* experts' noisy logits: the bar this expert must clear
    bar = torch.where(in_top, top[:, top_k : top_k + 1], top[:, top_k - 1 : top_k])
    p_in = torch.special.ndtr((logits - bar) / noise)  # (T, E)
    return 0.5 * (importance + cv_squared(p_in.sum(0)))


@dataclass(frozen=True)
class Routing:
    """What a mixture-of-experts layer decided.

    Attributes:
        probs: ``(B, N, E)`` router softmax.
        chosen: ``(B, N, k)`` the top-k experts of each token, best first.
        served: ``(B, N, k)`` bool: the choice fitted in its expert's buffer.
        capacity: buffer size of each expert, per image.
        aux: the balance loss (training only).
    """

    probs: torch.Tensor
    chosen: torch.Tensor
    served: torch.Tensor
    capacity: int
    aux: torch.Tensor | None

    @property
    def experts(self) -> torch.Tensor:
        """``(B, N, k)`` expert ids, -1 for a dropped choice."""
        return torch.where(self.served, self.chosen, -1)

    @property
    def assigned(self) -> torch.Tensor:
        """``(B,)`` token-expert pairs computed per image."""
        return self.served.sum((1, 2))


# --- modules -----------------------------------------------------------------------------------


def strided_conv_bn(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution with stride 2, BN, ReLU: one halving step of Xiao et al.'s stem."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ConvStem(nn.Module):
    """Xiao et al.'s convolutional stem at CIFAR scale: two stride-2 3x3 conv-BN-ReLU layers
    (32x32 -> 8x8) and a 1x1 convolution to the token width; then the class token and the
    position embedding (ViT)."""

    def __init__(self, dim: int, *, widths: tuple[int, int] = (64, 128)) -> None:
        super().__init__()
        w1, w2 = widths
        self.convs = nn.Sequential(strided_conv_bn(3, w1), strided_conv_bn(w1, w2))  # (B, w2, 8, 8)
        self.proj = nn.Conv2d(w2, dim, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 1 + PATCHES, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor, tap: nn.Module | None = None) -> torch.Tensor:
        """Tokens ``(B, 65, D)``; ``tap`` (attribution's probe) sees the 8x8 map of the convs."""
        feat = self.convs(x)  # (B, w2, 8, 8)
        patches = self.proj(feat if tap is None else tap(feat)).flatten(2).transpose(1, 2)  # (B, 64, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos  # (B, 65, D)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with its residual, as explicit matmuls.

    With ``sizes`` (ToMe's proportional attention) a token standing for s patches counts s
    times: log s is added to the logits of the keys.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``x + attn(norm(x))`` ``(B, N, D)``, the class token's attention ``(B, H, N)``
        and the keys ``(B, H, N, d)``."""
        b, n, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, d)
        logits = (q * (dim // self.heads) ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
        if sizes is not None:
            logits = logits + sizes.log()[:, None, None, :].to(logits.dtype)
        attn = logits.softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        return x + self.proj(out), attn[:, :, 0], k

    def flops(self, n: int) -> int:
        """qkv and output projections, QK^T and AV, on ``n`` tokens."""
        dim = self.proj.in_features
        return 2 * n * dim * 4 * dim + 4 * n * n * dim


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU by ATen's own vectorised kernel.

    ``F.gelu`` hands a contiguous float32 CPU tensor to oneDNN (``use_mkldnn`` in ATen's
    Activation.cpp), whose cost per call outweighs the work at batch 1, where an expert may see
    a handful of tokens; ATen computes a non-contiguous one itself. Each row is viewed as
    pairs, transposed: not contiguous for any number of rows (a transposed single row still
    is). The same function, rounded differently (within one float32 rounding step); about 0.2
    ms off a 6-8 ms pass (HISTORY.md, stop 25). An odd width goes to ``F.gelu`` as it is.
    """
    if x.shape[-1] % 2:
        return F.gelu(x)
    return F.gelu(x.unflatten(-1, (-1, 2)).mT).mT.flatten(-2)


class Mlp(nn.Module):
    """Linear, GELU, linear (no norm, no residual): the dense MLP or one expert."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu(self.fc1(x)))

    def flops(self, n: int) -> int:
        return 4 * n * self.fc1.in_features * self.fc1.out_features


class FeedForward(nn.Module):
    """Pre-norm dense MLP with its residual."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))

    def flops(self, n: int) -> int:
        return self.mlp.flops(n)


class MixtureOfExperts(nn.Module):
    """Pre-norm V-MoE layer with its residual: router, top-k, capacity, experts."""

    def __init__(self, dim: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList([Mlp(dim, hidden) for _ in range(num_experts)])

    def forward(
        self, x: torch.Tensor, *, top_k: int, capacity: float, noise: float = 0.0
    ) -> tuple[torch.Tensor, Routing]:
        """Each served choice adds ``gate * expert(token)``; dropped choices add nothing.

        Args:
            x: ``(B, N, D)`` tokens.
            top_k: experts per token.
            capacity: the capacity factor C.
            noise: std of the router noise (V-MoE trains with 1/E; 0 at inference).
        """
        b, n, dim = x.shape
        h = self.norm(x)
        logits = self.router(h).float()  # (B, N, E)
        noisy = logits + noise * torch.randn_like(logits) if noise > 0 else logits
        probs = noisy.softmax(-1)
        gates, chosen = probs.topk(top_k, dim=-1)  # (B, N, k)
        cap = expert_capacity(n, top_k, capacity, len(self.experts))
        if cap >= n:  # an expert meets each token at most once: nothing can overflow
            served = torch.ones_like(chosen, dtype=torch.bool)
        else:
            served = within_capacity(chosen, gates[..., 0], cap, len(self.experts))
        out = self._dispatch(h.reshape(b * n, dim), chosen, gates, served)
        aux = balance_loss(logits.flatten(0, 1), noisy.flatten(0, 1), top_k, noise) if noise > 0 else None
        return x + out.view(b, n, dim).to(x.dtype), Routing(probs, chosen, served, cap, aux)

    def _dispatch(
        self, flat: torch.Tensor, chosen: torch.Tensor, gates: torch.Tensor, served: torch.Tensor
    ) -> torch.Tensor:
        """Sum of ``gate * expert(token)`` over the served choices, ``(B N, D)`` in float32: the
        choices sorted by expert and gathered once, each expert called once on its slice; idle
        ones not at all. One ``index_add_`` in expert order adds them as one per expert would."""
        num_experts, k = len(self.experts), chosen.shape[-1]
        queue = torch.where(served, chosen, num_experts).flatten()  # dropped choices sort last
        order = queue.argsort(stable=True)
        counts = torch.bincount(queue, minlength=num_experts + 1).tolist()
        out = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        taken = len(order) - counts[-1]  # counts[-1]: the dropped choices
        if not taken:
            return out
        order = order[:taken]
        rows = order // k
        parts = flat.index_select(0, rows).split(counts[:-1])
        done = torch.cat([expert(part) for expert, part in zip(self.experts, parts, strict=True) if len(part)])
        return out.index_add_(0, rows, done.float() * gates.flatten()[order, None])

    def flops(self, n: int, assigned: torch.Tensor) -> torch.Tensor:
        """Router on ``n`` tokens plus one expert MLP per served choice; ``assigned`` ``(B,)``."""
        return 2 * n * self.router.in_features * self.router.out_features + assigned * self.experts[0].flops(1)


class TokenReducer(nn.Module):
    """Prunes (EViT) or merges (ToMe) a block's tokens; no weights. Its own module so that the
    tests can see when it runs."""

    def forward(self, tokens: Tokens, cls_attn: torch.Tensor, keys: torch.Tensor, policy: Policy) -> tuple[Tokens, int]:
        if policy.mode == "prune":
            return prune_tokens(tokens, cls_attn, policy.keep_ratio)
        return merge_tokens(tokens, keys, policy.merge_r)


@dataclass(frozen=True)
class BlockRecord:
    """What one block saw and decided: tokens entering attention (``before``: sizes and
    groups) and entering the MLP (``after``), the class token's attention ``(B, H, N)``, the
    reduction's FLOPs per image (None when it did not run) and the routing (MoE blocks)."""

    before: Tokens
    after: Tokens
    cls_attn: torch.Tensor
    reduce_flops: int | None
    routing: Routing | None


class Block(nn.Module):
    """Pre-norm transformer block: attention, optional token reduction, dense MLP or experts."""

    def __init__(self, dim: int, heads: int, hidden: int, *, reduce: bool, moe: bool) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.reduce = TokenReducer() if reduce else None
        self.moe = moe
        self.ffn = MixtureOfExperts(dim, hidden, NUM_EXPERTS) if moe else FeedForward(dim, hidden)

    def forward(self, tokens: Tokens, policy: Policy, noise: float = 0.0) -> tuple[Tokens, BlockRecord]:
        x, cls_attn, keys = self.attn(tokens.x, tokens.sizes if policy.mode == "merge" else None)
        before = replace(tokens, x=x)
        after, reduce_flops = before, None
        if self.reduce is not None and policy.mode != "none":
            after, reduce_flops = self.reduce(before, cls_attn, keys, policy)
        routing = None
        if self.moe:
            x, routing = self.ffn(after.x, top_k=policy.top_k, capacity=policy.capacity, noise=noise)
        else:
            x = self.ffn(after.x)
        return replace(after, x=x), BlockRecord(before, after, cls_attn, reduce_flops, routing)


class Head(nn.Module):
    """Final LayerNorm and linear classifier on the class token."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x[:, 0]))


# --- the model ---------------------------------------------------------------------------------

KEEP_GRID = tuple(float(v) for v in np.round(np.arange(0.3, 1.0001, 0.05), 2))  # the slider's steps
MERGE_GRID = tuple(range(0, MAX_MERGE + 1, 2))
TOP_K_GRID = tuple(range(1, NUM_EXPERTS + 1))
CAPACITY_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)  # at k = 2; C = 2 already never drops
SWEEP: tuple[tuple[str, str, float, Policy], ...] = (
    *(("prune", "keep_ratio", v, Policy(mode="prune", keep_ratio=v)) for v in KEEP_GRID),
    *(("merge", "merge_r", float(r), Policy(mode="merge", merge_r=r)) for r in MERGE_GRID),
    *(("top_k", "top_k", float(k), Policy(top_k=k)) for k in TOP_K_GRID),
    *(("capacity", "capacity", c, Policy(capacity=c)) for c in CAPACITY_GRID),
)  # (curve, knob, value, policy); the other knobs static
SWEEP_POLICIES = tuple(dict.fromkeys([STATIC, *(p for *_, p in SWEEP)]))  # each run once
MONITOR = {
    "full": STATIC,
    "prune_0.7": Policy(mode="prune", keep_ratio=0.7),
    "merge_8": Policy(mode="merge", merge_r=8),
}


def _init_weights(module: nn.Module) -> None:
    """ViT's initialisation: truncated normal linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


@register
class TokenExpertViT(DynamicModel):
    """A conv-stem ViT whose tokens can be pruned or merged and whose experts are routed."""

    name = "vit_tokens"
    title = "Vision transformer: tokens and experts"
    category = "input"
    papers = (
        "ViT: Dosovitskiy et al., ICLR 2021, arXiv:2010.11929",
        "Convolutional stem: Xiao et al., NeurIPS 2021, arXiv:2106.14881",
        "V-MoE: Riquelme et al., NeurIPS 2021, arXiv:2106.05974",
        "EViT: Liang et al., ICLR 2022, arXiv:2202.07800",
        "ToMe: Bolya et al., ICLR 2023, arXiv:2210.09461",
    )
    knobs = (
        Knob(
            "mode", "Token reduction", 0, 0, 0, "prune",
            f"What blocks {REDUCE_AT[0] + 1}-{REDUCE_AT[-1] + 1} do with their tokens after attention: keep all, "
            "prune, or merge.",
            options=MODES, option_labels=MODE_LABELS,
        ),
        Knob(
            "keep_ratio", "Keep ratio (prune)", 0.3, 1.0, 0.05, 0.7,
            "Share of patch tokens each pruning layer keeps; the rest are fused into one token.",
        ),
        Knob(
            "merge_r", "Tokens merged per layer (merge)", 0, MAX_MERGE, 1, 8,
            "How many tokens each merging layer merges into their most similar partners.",
        ),
        Knob(
            "top_k", "Experts per token (k)", 1, NUM_EXPERTS, 1, STATIC_TOP_K,
            f"How many of the experts each token is sent to in blocks {MOE_AT[0] + 1} and {MOE_AT[1] + 1}.",
        ),
        Knob(
            "capacity", "Capacity factor C", 0.25, NO_DROP_CAPACITY, 0.25, NO_DROP_CAPACITY,
            "Each expert takes at most ceil(C*k*N/E) tokens; the overflow skips the MLP. "
            f"C = {NO_DROP_CAPACITY:g} never drops.",
        ),
    )  # fmt: skip
    static_knobs: ClassVar[dict[str, Any]] = {
        "mode": "none", "keep_ratio": 1.0, "merge_r": 0, "top_k": STATIC_TOP_K, "capacity": NO_DROP_CAPACITY,
    }  # fmt: skip
    cost_knob = "keep_ratio"
    cost_direction = 1

    def __init__(
        self, *, num_classes: int = 10, dim: int = 128, depth: int = 6, heads: int = 4, mlp_ratio: int = 4
    ) -> None:
        super().__init__()
        self.stem = ConvStem(dim)
        self.blocks = nn.ModuleList(
            [Block(dim, heads, mlp_ratio * dim, reduce=i in REDUCE_AT, moe=i in MOE_AT) for i in range(depth)]
        )
        self.head = Head(dim, num_classes)
        self.apply(_init_weights)
        self.stem_flops, self.head_flops = self._fixed_flops()
        self.static_unit_flops = self._policy_unit_flops(STATIC)
        self._max_flops = sum(self._policy_unit_flops(Policy(top_k=NUM_EXPERTS)).values())

    # --- cost --------------------------------------------------------------------------------

    @torch.no_grad()
    def _fixed_flops(self) -> tuple[int, int]:
        """Stem and head FLOPs, counted on a probe (their shapes never change)."""
        was_training = self.training
        self.eval()
        tokens, stem = count_flops(self.stem, torch.zeros(1, 3, self.input_size, self.input_size))
        head = count_flops(self.head, tokens)[1]
        self.train(was_training)
        return stem, head

    @torch.no_grad()
    def _policy_unit_flops(self, policy: Policy) -> dict[str, int]:
        """Per-unit FLOPs of a policy that drops no expert choice (then the same on any input)."""
        was_training = self.training
        self.eval()
        records = self.run(torch.zeros(1, 3, self.input_size, self.input_size), policy)[1]
        self.train(was_training)
        return {name: int(f[0]) for name, f in self._costs(records).items()}

    def _costs(self, records: Sequence[BlockRecord]) -> dict[str, torch.Tensor]:
        """FLOPs ``(B,)`` of every unit, in execution order, from the shapes that ran."""
        b = records[0].before.x.shape[0]

        def each(flops: int) -> torch.Tensor:
            return torch.full((b,), flops, dtype=torch.long)

        costs = {"stem": each(self.stem_flops)}
        for i, (block, rec) in enumerate(zip(self.blocks, records, strict=True)):
            costs[f"block{i}.attn"] = each(block.attn.flops(rec.before.x.shape[1]))
            if block.reduce is not None:
                costs[f"block{i}.tokens"] = each(rec.reduce_flops or 0)
            n = rec.after.x.shape[1]
            if block.moe:
                costs[f"block{i}.experts"] = block.ffn.flops(n, rec.routing.assigned)
            else:
                costs[f"block{i}.mlp"] = each(block.ffn.flops(n))
        costs["head"] = each(self.head_flops)
        return costs

    @property
    def full_flops(self) -> int:
        """The static network: 65 tokens through every block, k = 2, no choice dropped."""
        return sum(self.static_unit_flops.values())

    @property
    def max_flops(self) -> int:
        """Every token to every expert, no token shed (shedding tokens only ever saves)."""
        return self._max_flops

    def unit_modules(self) -> dict[str, nn.Module]:
        units: dict[str, nn.Module] = {"stem": self.stem}
        for i, block in enumerate(self.blocks):
            units[f"block{i}.attn"] = block.attn
            if block.reduce is not None:
                units[f"block{i}.tokens"] = block.reduce
            units[f"block{i}.{'experts' if block.moe else 'mlp'}"] = block.ffn
        return {**units, "head": self.head}

    # --- forward passes ----------------------------------------------------------------------

    def run(
        self, x: torch.Tensor, policy: Policy, *, noise: float = 0.0, tap: nn.Module | None = None
    ) -> tuple[torch.Tensor, list[BlockRecord]]:
        """Logits ``(B, C)`` and every block's record under ``policy``; tokens shed by a block
        are gone from every later computation. The batched and the batch-1 path are this one.
        ``tap`` is attribution's probe on the stem's patch map (:class:`models.core.Explained`)."""
        x = self.stem(x, tap)  # (B, 65, D)
        shape, device = x.shape[:2], x.device
        tokens = Tokens.of(
            x,
            lambda: torch.ones(shape, dtype=torch.float32, device=device),
            lambda: torch.arange(1, PATCHES + 1, device=device).expand(shape[0], -1),
        )
        records = []
        for block in self.blocks:
            tokens, record = block(tokens, policy, noise)
            records.append(record)
        return self.head(tokens.x), records

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The static network's logits: every token, k = 2, no choice dropped."""
        return self.run(x, STATIC)[0]

    def training_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        balance_weight: float = 0.01,
        reduce_share: float = 0.5,
        keep_max: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Cross-entropy plus ``balance_weight`` times V-MoE's balance loss (mean over the MoE
        layers), with router noise of std 1/E. On a ``reduce_share`` of the steps the tokens
        are pruned at a random keep ratio (uniform between the slider's lowest and ``keep_max``)
        or merged at a random r (half each), so the weights learn every operating point of the
        sliders, not only the static network."""
        policy = random_policy(reduce_share, keep_max)
        logits, records = self.run(x, policy, noise=1.0 / NUM_EXPERTS)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        balance = torch.stack([r.routing.aux for r in records if r.routing is not None]).mean()
        loss = ce + balance_weight * balance
        logs = {
            "loss": loss.detach(),
            "ce": ce.detach(),
            "balance": balance.detach(),
            "tokens": records[-1].after.x.shape[1],
        }
        return loss, logs

    # --- batch-1 trace -----------------------------------------------------------------------

    def runs_static(self, **knobs: Any) -> bool:
        """The static network also runs when a keep ratio or merge count sheds no token (a keep
        ratio of 0.97 keeps all 64 patches), and the knobs the mode does not use change nothing."""
        policy = Policy.from_knobs(self.knob_values(**knobs))
        depth = len(self.blocks)
        routing = (policy.top_k, policy.capacity) == (STATIC.top_k, STATIC.capacity)
        return routing and token_counts(policy, depth) == token_counts(STATIC, depth)

    @torch.inference_mode()
    def trace(self, x: torch.Tensor, **knobs: Any) -> Trace:
        """Batch-1 dynamic inference: pruned and merged tokens are gone from later layers, idle
        experts are not called, dropped choices are not computed."""
        self.check_input(x)
        values = self.knob_values(**knobs)
        policy = Policy.from_knobs(values)
        (logits, records), latency = timed(lambda: self.run(x, policy))
        units = self._units(records, policy.mode)
        flops = sum(u.flops for u in units)
        extras = trace_extras(records)
        probs = logits.softmax(-1)[0].numpy()
        return Trace(self.name, values, probs, units, flops, self.full_flops, latency, extras)

    def _units(self, records: Sequence[BlockRecord], mode: str) -> tuple[Unit, ...]:
        costs = {name: int(f[0]) for name, f in self._costs(records).items()}
        full = self.static_unit_flops
        decisions: dict[str, Any] = {}
        for i, rec in enumerate(records):
            if rec.reduce_flops is not None:
                decisions[f"block{i}.tokens"] = token_decision(rec.after, mode)
            if rec.routing is not None:
                decisions[f"block{i}.experts"] = rec.routing.experts[0].numpy()  # (N, k), -1 dropped
        units = []
        for name, flops in costs.items():
            if name.endswith(".tokens"):
                ran = name in decisions
                units.append(Unit(name, "token", ran, None, decisions.get(name), flops, full[name]))
            elif name.endswith(".experts"):
                units.append(Unit(name, "expert", True, None, decisions[name], flops, full[name]))
            else:
                units.append(Unit(name, "layer", True, None, True, flops, full[name]))
        return tuple(units)

    # --- batched evaluation ------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every sweep setting on a batch: probabilities ``(B, S, C)``, FLOPs ``(B, S)``, dropped
        expert choices ``(B, S)`` and expert loads ``(B, S, L, E)``, S = ``SWEEP_POLICIES``."""
        runs = [self._batch_outputs(x, policy) for policy in SWEEP_POLICIES]
        return {key: torch.stack([r[key] for r in runs], 1) for key in runs[0]}

    def _batch_outputs(self, x: torch.Tensor, policy: Policy) -> dict[str, torch.Tensor]:
        logits, records = self.run(x, policy)
        experts = [r.routing.experts.flatten(1) for r in records if r.routing is not None]  # (B, N k) each
        return {
            "probs": logits.softmax(-1),
            "flops": torch.stack(list(self._costs(records).values())).sum(0),
            "dropped": sum((e < 0).sum(1) for e in experts),
            "choices": torch.full((x.shape[0],), sum(e.shape[1] for e in experts)),
            "expert_load": torch.stack([F.one_hot(e + 1, NUM_EXPERTS + 1)[..., 1:].sum(1) for e in experts], 1),
        }

    @property
    def monitor_names(self) -> list[str]:
        return list(MONITOR)

    @torch.no_grad()
    def monitor_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The static network, pruning at 0.7 and merging 8 per layer: ``(B, 3, C)``."""
        return torch.stack([self.run(x, policy)[0].softmax(-1) for policy in MONITOR.values()], 1)

    def sweep(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
        return sweep_policies(self, outputs, labels)

    def summarise(self, table: dict[str, Any], val_table: dict[str, Any]) -> dict[str, Any]:
        return summarise(table, val_table)

    def explained_forward(self, trace: Trace, *, static: bool = False) -> Explained:
        """The run's policy (tokens shed, experts chosen) or every token; Grad-CAM on the stem's
        8x8 patch map. The policy decides afresh for every input it is given: on the image itself
        (Grad-CAM, saliency) that is the run's own decisions; integrated gradients and occlusion
        feed scaled and patched copies, on which the tokens kept and experts chosen can differ,
        so their maps also show what the policy would shed there. The CNNs fix the run's
        decisions instead; the text says so."""
        policy = STATIC if static else Policy.from_knobs(trace.knobs)
        what = (
            "every token, k = 2, no drops"
            if static
            else "this run's knobs; tokens and experts are chosen on each input the method feeds "
            "(on the image itself: this run's choices; integrated gradients and occlusion feed altered copies)"
        )
        tap = nn.Identity()
        same = static or self.runs_static(**trace.knobs)  # no token shed, k = 2, no drops: the static network
        # the stem's two stride-2 3x3 convolutions (padding 1) centre patch j on pixel 4j
        return Explained(lambda x: self.run(x, policy, tap=tap)[0], tap, what, static=same, tap_centre=0.0)

    def curves(self, table: dict[str, Any]) -> tuple[Curve, ...]:
        """Pruning, merging, k and capacity, each swept with the other mechanisms static (as
        :data:`SWEEP` measured them); a knob the mode ignores is left free."""
        experts = {"top_k": STATIC_TOP_K, "capacity": NO_DROP_CAPACITY}
        fixed = {
            "prune": {"mode": "prune", **experts},
            "merge": {"mode": "merge", **experts},
            "top_k": {"mode": "none", "capacity": NO_DROP_CAPACITY},
            "capacity": {"mode": "none", "top_k": STATIC_TOP_K},
        }
        labels = dict(zip(MODES, MODE_LABELS, strict=True)) | {"top_k": "experts per token", "capacity": "capacity"}
        curves = table["curves"]
        return tuple(Curve(labels[name], curves[name]["knob"], fixed[name], curves[name]["points"]) for name in fixed)

    def calibrate(self, val_table: dict[str, Any]) -> dict[str, Any]:
        return calibrate(val_table)


def random_policy(reduce_share: float, keep_max: float = 1.0) -> Policy:
    """A training step's token policy: static, or a random keep ratio (up to ``keep_max``) or
    merge count."""
    if not KEEP_GRID[0] <= keep_max <= 1:
        raise ValueError(f"keep_max must lie in [{KEEP_GRID[0]}, 1] (the keep ratio slider's range), not {keep_max}")
    u = torch.rand(3).tolist()
    if u[0] >= reduce_share:
        return STATIC
    if u[1] < 0.5:
        low = KEEP_GRID[0]
        return Policy(mode="prune", keep_ratio=low + (keep_max - low) * u[2])
    return Policy(mode="merge", merge_r=int(u[2] * (MAX_MERGE + 1)))


# --- trace records -----------------------------------------------------------------------------


def _on_grid(values: torch.Tensor) -> np.ndarray:
    """``(P, ...)`` per original patch -> ``(8, 8, ...)``."""
    return values.reshape(GRID, GRID, *values.shape[1:]).numpy()


def patch_groups(tokens: Tokens) -> np.ndarray:
    """``(8, 8)``: the patch token each original patch is now in (0-based; patches sharing a
    number were fused or merged together)."""
    return _on_grid(tokens.groups[0] - 1)


def patch_kept(tokens: Tokens) -> np.ndarray:
    """``(8, 8)`` bool: the patch is still a token of its own (not fused, not merged)."""
    return _on_grid(tokens.sizes[0][tokens.groups[0]] == 1)


def token_decision(tokens: Tokens, mode: str) -> np.ndarray:
    """A reduction unit's decision over the 8x8 patches: the kept mask when pruning, the merge
    groups when merging."""
    return patch_kept(tokens) if mode == "prune" else patch_groups(tokens)


def cls_attention_map(rec: BlockRecord) -> np.ndarray:
    """The class token's head-averaged attention ``(8, 8)`` over the patches; a token standing
    for s patches shares its attention evenly among them."""
    attn = rec.cls_attn[0].mean(0) / rec.before.sizes[0]  # (N,)
    return _on_grid(attn[rec.before.groups[0]])


def routing_record(i: int, rec: BlockRecord) -> dict[str, Any]:
    """One MoE layer's decisions for the pages, on the 8x8 grid and in totals."""
    r, groups = rec.routing, rec.after.groups[0]
    experts = r.experts[0]  # (N, k)
    num_experts = r.probs.shape[-1]
    return {
        "block": i,
        "tokens": experts.shape[0],
        "capacity": r.capacity,
        "probs": _on_grid(r.probs[0][groups]),  # (8, 8, E) router softmax of each patch's token
        "experts": _on_grid(experts[groups]).transpose(2, 0, 1),  # (k, 8, 8), -1 dropped
        "cls_probs": r.probs[0, 0].numpy(),
        "cls_experts": experts[0].numpy(),
        "demand": torch.bincount(r.chosen[0].flatten(), minlength=num_experts).tolist(),
        "load": torch.bincount(experts[experts >= 0], minlength=num_experts).tolist(),
        "dropped_choices": int((experts < 0).sum()),
        "dropped_tokens": int((experts < 0).all(1).sum()),  # every choice dropped: MLP skipped
        "choices": experts.numel(),
    }


def trace_extras(records: Sequence[BlockRecord]) -> dict[str, Any]:
    """What the pages draw besides the units: token counts and per-block maps over the grid."""
    return {
        "grid": GRID,
        "reduce_at": list(REDUCE_AT),
        "moe_at": list(MOE_AT),
        "num_experts": NUM_EXPERTS,
        "tokens_attn": [rec.before.x.shape[1] for rec in records],  # class token included
        "tokens_mlp": [rec.after.x.shape[1] for rec in records],
        "groups": [patch_groups(rec.after) for rec in records],  # after each block's reduction
        "token_sizes": [_on_grid(rec.after.sizes[0][rec.after.groups[0]]).astype(int) for rec in records],
        "kept": [patch_kept(rec.after) for rec in records],
        "cls_attention": [cls_attention_map(rec) for rec in records],
        "moe": [routing_record(i, rec) for i, rec in enumerate(records) if rec.routing is not None],
    }


# --- eval tables -------------------------------------------------------------------------------


def sweep_policies(model: TokenExpertViT, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """Accuracy and mean cost of every sweep setting.

    Args:
        outputs: :meth:`TokenExpertViT.evaluate_batch` over a split (columns ``SWEEP_POLICIES``).
        labels: ``(N,)`` true classes.

    Returns:
        The eval table: ``points`` is the pruning curve (the cost knob, ``keep_ratio``);
        ``curves`` holds it with the merging curve (``merge_r``) and the experts' ``top_k``
        and ``capacity`` curves, each point with accuracy, mean MFLOPs, tokens per block,
        the share of expert choices dropped, each MoE layer's load per expert, and that load
        per true class.
    """
    correct = outputs["probs"].argmax(-1) == labels[:, None]  # (N, S)
    num_classes = outputs["probs"].shape[-1]

    def point(value: float, policy: Policy) -> dict[str, Any]:
        s = SWEEP_POLICIES.index(policy)
        load = outputs["expert_load"][:, s].double().sum(0)  # (L, E)
        return {
            "value": value,
            "accuracy": correct[:, s].double().mean().item(),
            "mflops": outputs["flops"][:, s].double().mean().item() / 1e6,
            "tokens": [list(t) for t in token_counts(policy, len(model.blocks))],
            "dropped_share": (outputs["dropped"][:, s].sum() / outputs["choices"][:, s].sum()).item(),
            "expert_share": (load / load.sum(1, keepdim=True).clamp(min=1)).tolist(),
            "class_expert_share": class_share(outputs["expert_load"][:, s], labels, num_classes).tolist(),
        }

    curves: dict[str, dict[str, Any]] = {}
    for curve, knob, value, policy in SWEEP:
        curves.setdefault(curve, {"knob": knob, "points": []})["points"].append(point(value, policy))
    full = {"accuracy": point(0.0, STATIC)["accuracy"], "mflops": model.full_flops / 1e6}
    return {"knob": "keep_ratio", "mode": "prune", "points": curves["prune"]["points"], "curves": curves, "full": full}


def class_share(load: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, L, E)``: of the expert choices served to the tokens of class c's images in MoE
    layer l, the share expert e took. ``load``: ``(N, L, E)`` per image."""
    total = torch.zeros(num_classes, *load.shape[1:], dtype=torch.float64).index_add_(0, labels, load.double())
    return total / total.sum(-1, keepdim=True).clamp(min=1)


def _test_point(points: list[dict[str, Any]], full: dict[str, Any], value: float) -> dict[str, Any]:
    """The test point at knob ``value`` (chosen on validation), with its saving and drop."""
    best = next(p for p in points if p["value"] == value)
    return {
        "value": best["value"], "accuracy": best["accuracy"], "mflops": best["mflops"],
        "flops_saving": 1 - best["mflops"] / full["mflops"],
        "drop_points": 100 * (full["accuracy"] - best["accuracy"]),
    }  # fmt: skip


def _at_saving(
    points: list[dict[str, Any]], full: dict[str, Any], val_points: list[dict[str, Any]], val_full: dict[str, Any],
    saving: float,
) -> dict[str, Any] | None:  # fmt: skip
    """The test point of the setting that, on validation, is the most accurate saving at least
    ``saving`` of the full network's FLOPs (its test saving is reported as measured)."""
    cheap = [p for p in val_points if p["mflops"] <= (1 - saving) * val_full["mflops"]]
    return _test_point(points, full, max(cheap, key=lambda p: p["accuracy"])["value"]) if cheap else None


def cheapest_within(
    points: list[dict[str, Any]], full: dict[str, Any], val_points: list[dict[str, Any]], val_full: dict[str, Any],
    drop: float,
) -> dict[str, Any] | None:  # fmt: skip
    """The test point of the setting that, on validation, is the cheapest within ``drop`` points
    of the full network's accuracy (its test drop is reported as measured)."""
    close = [p for p in val_points if 100 * (val_full["accuracy"] - p["accuracy"]) <= drop + 1e-9]
    return _test_point(points, full, _cheapest(close)["value"]) if close else None


def _cheapest(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point of least mean MFLOPs (ties: the lower knob value)."""
    return min(points, key=lambda p: (p["mflops"], p["value"]))


def summarise(table: dict[str, Any], val_table: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets read off a test table: full accuracy; pruning and merging at 30% fewer
    mean FLOPs, and pruning at its cheapest within 1.5 points (each setting chosen on the
    validation table); the experts' k and capacity curves in brief."""
    full, curves = table["full"], table["curves"]
    val_full, val_curves = val_table["full"], val_table["curves"]
    defaults = table.get("default_knobs", {})

    def at(curve: str, value: float | None) -> dict[str, Any] | None:
        points = curves[curve]["points"]
        return None if value is None else min(points, key=lambda p: abs(p["value"] - value))

    brief = ("value", "accuracy", "mflops", "dropped_share")
    return {
        "full_accuracy": full["accuracy"],
        "full_mflops": full["mflops"],
        "prune_at_30pct_saving": _at_saving(
            curves["prune"]["points"], full, val_curves["prune"]["points"], val_full, 0.3
        ),
        "merge_at_30pct_saving": _at_saving(
            curves["merge"]["points"], full, val_curves["merge"]["points"], val_full, 0.3
        ),
        "prune_within_1.5_points": cheapest_within(
            curves["prune"]["points"], full, val_curves["prune"]["points"], val_full, 1.5
        ),
        "default_prune": at("prune", defaults.get("keep_ratio")),
        "default_merge": at("merge", defaults.get("merge_r")),
        "top_k": [{k: p[k] for k in brief} for p in curves["top_k"]["points"]],
        "capacity": [{k: p[k] for k in brief} for p in curves["capacity"]["points"]],
    }


def calibrate(table: dict[str, Any], *, tolerance: float = 0.01) -> dict[str, Any]:
    """Default knobs from a *validation* table: the cheapest keep ratio and the cheapest merge
    count whose accuracy stays within ``tolerance`` of the full network; pruning stays the
    default mode (it is the cost knob's mode)."""
    full = table["full"]["accuracy"]

    def cheapest(curve: str) -> float:
        return _cheapest([p for p in table["curves"][curve]["points"] if p["accuracy"] >= full - tolerance])["value"]

    return {"mode": "prune", "keep_ratio": cheapest("prune"), "merge_r": int(cheapest("merge"))}
