"""A spatially masked residual network: input-adaptive inference, pixel by pixel.

Papers: DynConv (Verelst & Tuytelaars, CVPR 2020, arXiv:1912.03203), SACT (Figurnov et al.,
CVPR 2017, arXiv:1612.02297).

The backbone is the gated ResNet's (:mod:`models.block_skip`: six residual blocks of two 3x3
conv-BN-ReLU layers, two per stage at 16x16, 8x8 and 4x4). In front of each block a mask unit
(DynConv's: one 3x3 convolution to a logit per position) gives, for every position, the
probability that the block's residual is needed there. At inference the residual is computed
at the positions whose probability reaches the ``threshold`` knob and the input passes on
unchanged everywhere else.

Execution is really sparse (DynConv's gather, compute, scatter): the first convolution runs at
the mask dilated by its 3x3 kernel (the second one reads those positions), the second at the
mask; each gathers its active 3x3 neighbourhoods into a matrix, multiplies it by the kernel
and scatters the result back. FLOPs are counted on those matrix products, so only the
positions computed count. Threshold 0 is the static network: dense convolutions everywhere and
no mask unit evaluated.

Training (DynConv): Gumbel-sigmoid masks with straight-through hard decisions; the residual is
computed densely and multiplied by the mask (exact: outputs at kept positions equal the sparse
path's), plus a sparsity loss that pulls the network's conv cost, counted with the dilated
masks of the first convolutions, towards a target. The backbone can start from the gated
ResNet's trained weights (``models.train --init``); the shipped weights were trained from
scratch (their card's lineage).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from models.block_skip import (
    BLOCKS_PER_STAGE,
    TAP_BEFORE,
    THRESHOLDS,
    GatedResNet,
    calibrate,
    gates_enabled,
    gumbel_gate,
    operating_point,
)
from models.core import Explained, Knob, Trace, Unit, register, timed
from models.early_exit import Residual

_KY = torch.arange(3).repeat_interleave(3)  # (9,) kernel rows, in the order of a flattened 3x3 kernel
_KX = torch.arange(3).repeat(3)  # (9,) kernel columns


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """Positions within one pixel (3x3) of the mask: what the second convolution reads.
    ``(..., H, W)`` bool or float, same type back."""
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    out = F.max_pool2d(flat, 3, stride=1, padding=1).reshape(mask.shape)
    return out > 0 if mask.dtype == torch.bool else out


def gather_conv_bn_relu(x: torch.Tensor, layer: nn.Sequential, positions: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv-BN-ReLU (eval-mode BN) computed only at ``positions``.

    Args:
        x: ``(C, H, W)`` input.
        layer: ``conv_bn``'s ``Sequential(Conv2d(3x3, padding 1, no bias), BatchNorm2d, ReLU)``.
        positions: ``(n,)`` flat indices ``row * W + col`` of the outputs to compute.

    Returns:
        ``(n, C_out)`` outputs at those positions.
    """
    conv, bn = layer[0], layer[1]
    _, _, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))  # (C, H+2, W+2)
    rows, cols = positions // w, positions % w
    patches = padded[:, rows[:, None] + _KY, cols[:, None] + _KX]  # (C, n, 9)
    columns = patches.transpose(0, 1).reshape(len(positions), -1)  # (n, C*9), the kernel's order
    out = columns @ conv.weight.reshape(conv.out_channels, -1).T  # (n, C_out)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return F.relu(out * scale + (bn.bias - bn.running_mean * scale))


class MaskedResidual(Residual):
    """``x + f(x)`` with ``f`` computed only where a spatial mask says (batch size 1)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(1, C, H, W)``; ``mask`` ``(H, W)`` bool, or None for the dense block."""
        if mask is None:
            return x + self.body(x)
        if not mask.any():
            return x
        c, h, w = x.shape[1:]
        outer = dilate(mask).flatten().nonzero().squeeze(1)  # where the first conv must run
        inner = mask.flatten().nonzero().squeeze(1)
        mid = x.new_zeros(c, h * w)
        mid[:, outer] = gather_conv_bn_relu(x[0], self.body[0], outer).T
        residual = gather_conv_bn_relu(mid.view(c, h, w), self.body[1], inner)  # (n, C)
        out = x[0].reshape(c, h * w).clone()
        out[:, inner] += residual.T
        return out.view(1, c, h, w)


class MaskUnit(nn.Module):
    """DynConv's mask unit: one 3x3 convolution from the block input to a logit per position.
    Its bias starts at +2 (probability 0.88): a new unit first lets its block compute."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.constant_(self.conv.bias, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, H, W)`` from block inputs ``(B, C, H, W)``."""
        return self.conv(x).squeeze(1)


@register
class PixelMaskResNet(GatedResNet):
    """Six residual blocks whose residual is computed only at the positions their mask keeps."""

    name = "pixel_mask"
    title = "Pixel masks (DynConv ResNet)"
    category = "input"
    papers = (
        "DynConv: Verelst & Tuytelaars, CVPR 2020, arXiv:1912.03203",
        "SACT: Figurnov et al., CVPR 2017, arXiv:1612.02297",
    )
    knobs = (
        Knob(
            "threshold", "Mask threshold", 0.0, 1.0, 0.05, 0.5,
            "A block computes a position when its mask unit's probability reaches this value; "
            "0 computes every position of every block.",
        ),
    )  # fmt: skip
    static_knobs: ClassVar[dict[str, Any]] = {"threshold": 0.0}
    cost_knob = "threshold"
    cost_direction = -1  # a higher threshold computes fewer positions

    def __init__(self, *, num_classes: int = 10, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__(num_classes=num_classes, widths=widths)
        channels = [c for c in widths for _ in range(BLOCKS_PER_STAGE)]
        self.blocks = nn.ModuleList([MaskedResidual(c) for c in channels])
        self.gates = nn.ModuleList([MaskUnit(c) for c in channels])  # named gates: one per block, as before
        self.stage_sizes = [self.input_size // 2**s for s in range(1, len(widths) + 1)]
        self.flops = self._unit_flops()

    def block_size(self, i: int) -> int:
        """Height (= width) of block ``i``'s feature map."""
        return self.stage_sizes[self.stage_of(i)]

    def conv_flops_per_position(self, i: int) -> int:
        """FLOPs of one of block ``i``'s two convolutions at one output position."""
        return self.flops[f"block{i}"] // (2 * self.block_size(i) ** 2)

    # --- training ----------------------------------------------------------------------------

    def init_from(self, path: Any) -> dict[str, list[str]]:
        """Start from this model's own weights or the gated ResNet's backbone (its gates are
        dropped; the mask units start new). Returns the modules left new."""
        state = load_file(str(path))
        if any(k.startswith("gates.") and k.endswith("fc1.weight") for k in state):
            state = {k: v for k, v in state.items() if not k.startswith("gates.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"weights {path} do not fit {self.name}: unexpected {unexpected[:5]}")
        return {"new": sorted({".".join(k.split(".")[:2]) for k in missing})}

    def forward_train(
        self, x: torch.Tensor, *, all_on_share: float = 0.0
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Logits ``(B, C)``, each block's sampled mask ``(B, H, W)`` (hard forward, soft
        backward) and which rows were masked ``(B,)``. A random ``all_on_share`` of the rows
        computes every position, so the static network (threshold 0) stays trained."""
        masked = torch.rand(x.shape[0], device=x.device) >= all_on_share  # (B,)
        h = self.stem(x)
        masks = []
        for i, (unit, block) in enumerate(zip(self.gates, self.blocks, strict=True)):
            h = self._before(i, h)
            m = torch.where(masked[:, None, None], gumbel_gate(unit(h).float()), 1.0)  # (B, H, W)
            masks.append(m)
            h = h + m.to(h.dtype)[:, None] * block.body(h)
        return self.head(h), masks, masked

    def training_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target_cost: float = 0.4,
        sparsity_weight: float = 10.0,
        all_on_share: float = 0.25,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Cross-entropy plus DynConv's sparsity loss: the squared gap between the masked rows'
        conv cost (share of the dense convolution FLOPs, the first convolution at the dilated
        mask) and ``target_cost``, for the network and for each block. Every block's
        convolutions cost the same here, so the network's share is the mean of the blocks'.

        The per-block term is DynConv's guard against collapse: with the network term alone,
        our first run met the budget by switching whole blocks on or off (masks all ones or all
        zeros), which is block skipping, not a spatial decision."""
        logits, masks, masked = self.forward_train(x, all_on_share=all_on_share)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        if not masked.any():
            cost = ce.new_ones(())
            sparsity = ce.new_zeros(())
        else:
            shares = torch.stack([(m[masked].mean() + dilate(m[masked]).mean()) / 2 for m in masks])
            cost = shares.mean()
            sparsity = (cost - target_cost) ** 2 + ((shares - target_cost) ** 2).mean()
        loss = ce + sparsity_weight * sparsity
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "cost": cost.detach()}

    # --- inference ---------------------------------------------------------------------------

    @torch.inference_mode()
    def trace(self, x: torch.Tensor, **knobs: Any) -> Trace:
        """Batch-1 dynamic inference: each block computes only the positions its mask keeps."""
        self.check_input(x)
        values = self.knob_values(**knobs)
        threshold = values["threshold"]
        dynamic = gates_enabled(threshold)

        def run() -> tuple[torch.Tensor, list[np.ndarray | None]]:
            h, probs = self.stem(x), []
            for i, (unit, block) in enumerate(zip(self.gates, self.blocks, strict=True)):
                h = self._before(i, h)
                if not dynamic:
                    probs.append(None)
                    h = block(h)
                    continue
                p = torch.sigmoid(unit(h))[0]  # (H, W)
                probs.append(p.numpy())
                mask = p.double() >= threshold  # as the batched path compares
                if mask.any():
                    h = block(h, mask)
            return self.head(h).softmax(-1)[0], probs

        (probs, mask_probs), latency = timed(run)
        masks = [None if p is None else p.astype(np.float64) >= threshold for p in mask_probs]
        units = self._units(mask_probs, masks)
        flops = sum(u.flops for u in units)
        extras = {
            "mask_probs": mask_probs,  # per block (H, W) probabilities, None when masks are off
            "masks": masks,  # per block (H, W) bool: where the residual was computed
            "blocks_per_stage": BLOCKS_PER_STAGE,
            "stage_shapes": self.stage_shapes,
            "conv_density": [self._conv_density(i, m) for i, m in enumerate(masks)],
            "block_flops": [self.flops[f"block{i}"] for i in range(self.num_blocks)],
        }
        return Trace(self.name, values, probs.numpy(), units, flops, self.full_flops, latency, extras)

    def _conv_density(self, i: int, mask: np.ndarray | None) -> float:
        """Share of block ``i``'s dense convolution FLOPs that ran."""
        if mask is None:
            return 1.0
        m = torch.from_numpy(mask)
        return (m.double().mean() + dilate(m).double().mean()).item() / 2 if m.any() else 0.0

    def _units(self, probs: list[np.ndarray | None], masks: list[np.ndarray | None]) -> tuple[Unit, ...]:
        """Units in execution order: fixed layers; per block the mask unit (ran when masks are
        on) and the block (``decision``: the (H, W) mask; ran when it keeps any position)."""
        units = []
        for name, f in self.flops.items():
            if name.startswith("gate"):
                i = int(name[4:])
                on = probs[i] is not None
                units.append(Unit(name, "gate", on, None, on, f if on else 0, 0))
            elif name.startswith("block"):
                i = int(name[5:])
                mask = masks[i]
                ran = mask is None or bool(mask.any())
                spent = f if mask is None else self.conv_flops_per_position(i) * self._positions(mask)
                score = None if probs[i] is None else float(probs[i].mean())
                decision = np.ones((self.block_size(i),) * 2, bool) if mask is None else mask
                units.append(Unit(name, "pixel", ran, score, decision, spent, f))
            else:
                units.append(Unit(name, "layer", True, None, True, f, f))
        return tuple(units)

    @staticmethod
    def _positions(mask: np.ndarray) -> int:
        """Output positions the two convolutions compute: the dilated mask's, then the mask's."""
        if not mask.any():
            return 0
        return int(dilate(torch.from_numpy(mask)).sum()) + int(mask.sum())

    def explained_forward(self, trace: Trace, *, static: bool = False) -> Explained:
        """The residuals computed where this run's masks were (dense residuals times the fixed
        masks: the same outputs at kept positions), or everywhere when ``static``; Grad-CAM on
        the 8x8 feature map that leaves stage 2."""
        masks = [None if static or m is None else torch.from_numpy(m) for m in trace.extras["masks"]]

        tap = nn.Identity()

        def forward(x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            for i, block in enumerate(self.blocks):
                h = self._before(i, tap(h) if i == TAP_BEFORE else h)
                m = masks[i]
                h = block(h) if m is None else h + m.to(h.dtype) * block.body(h)
            return self.head(h)

        dense = all(m is None or bool(m.all()) for m in masks)  # every position of every block
        return Explained(forward, tap, "dense" if static else "this run's masks", static=dense)

    @torch.inference_mode()
    def forward_masked(self, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batched version of :meth:`trace` (dense residuals multiplied by the masks: the
        same outputs at every kept position, without per-image gathers).

        Returns:
            probs ``(B, C)``, per-block positions computed by the first and the second
            convolution ``(B, N, 2)``, and per-block mask density ``(B, N)``.
        """
        dynamic = gates_enabled(threshold)
        h = self.stem(x)
        b = x.shape[0]
        positions = torch.zeros(b, self.num_blocks, 2, dtype=torch.long, device=x.device)
        for i, (unit, block) in enumerate(zip(self.gates, self.blocks, strict=True)):
            h = self._before(i, h)
            if not dynamic:
                positions[:, i] = self.block_size(i) ** 2
                h = block(h)
                continue
            mask = torch.sigmoid(unit(h)).double() >= threshold  # (B, H, W)
            positions[:, i, 0] = dilate(mask).flatten(1).sum(1)
            positions[:, i, 1] = mask.flatten(1).sum(1)
            h = h + mask.to(h.dtype)[:, None] * block.body(h)
        sizes = torch.tensor([self.block_size(i) ** 2 for i in range(self.num_blocks)], device=x.device)
        density = positions[..., 1].double() / sizes
        return self.head(h).softmax(-1), positions, density

    def evaluate_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities ``(B, T, C)``, positions computed ``(B, T, N, 2)`` and mask density
        ``(B, T, N)`` at every threshold on the eval grid."""
        runs = [self.forward_masked(x, float(t)) for t in THRESHOLDS]
        return {key: torch.stack([r[k] for r in runs], 1) for k, key in enumerate(("probs", "positions", "density"))}

    @property
    def monitor_names(self) -> list[str]:
        return ["dense", "threshold_0.5"]

    def monitor_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Dense, and masked at threshold 0.5: ``(B, 2, C)``, logged while training."""
        return torch.stack([self.forward_masked(x, 0.0)[0], self.forward_masked(x, 0.5)[0]], 1)

    def sweep(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
        return sweep_masks(self, outputs, labels)

    def summarise(self, table: dict[str, Any], val_table: dict[str, Any]) -> dict[str, Any]:
        return summarise(table)  # the default threshold, which calibrate chose on val_table

    def calibrate(self, val_table: dict[str, Any]) -> dict[str, Any]:
        return calibrate(val_table)


def sweep_masks(model: PixelMaskResNet, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """Accuracy and mean cost at every threshold of the grid, with how densely each block
    computed.

    Args:
        outputs: ``evaluate_batch``'s ``probs`` ``(N, T, C)``, ``positions`` ``(N, T, B, 2)``
            and ``density`` ``(N, T, B)``.
        labels: ``(N,)`` true classes.

    Returns:
        The eval table: per threshold the accuracy, mean MFLOPs, the share of the masked
        blocks' dense convolution FLOPs that ran (``conv_share``), and per block the mean mask
        density and the mean share of its convolution FLOPs; ``full`` is threshold 0.
    """
    num_blocks = outputs["positions"].shape[2]
    per_position = torch.tensor([model.conv_flops_per_position(i) for i in range(num_blocks)], dtype=torch.float64)
    block_flops = torch.tensor([model.flops[f"block{i}"] for i in range(num_blocks)], dtype=torch.float64)
    fixed = model.full_flops - block_flops.sum().item()
    gate_flops = sum(model.flops[f"gate{i}"] for i in range(num_blocks))
    points = []
    for t, value in enumerate(THRESHOLDS):
        spent = outputs["positions"][:, t].double().sum(2) * per_position  # (N, B) conv FLOPs per block
        flops = fixed + spent.sum(1) + (gate_flops if gates_enabled(float(value)) else 0)
        right = outputs["probs"][:, t].argmax(-1) == labels
        points.append(
            {
                "value": float(value),
                "accuracy": right.double().mean().item(),
                "mflops": flops.mean().item() / 1e6,
                "conv_share": (spent.sum(1) / block_flops.sum()).mean().item(),
                "block_density": outputs["density"][:, t].mean(0).tolist(),
                "block_conv_share": (spent / block_flops).mean(0).tolist(),
            }
        )
    assert points[0]["value"] == 0.0, "the grid starts with every position computed"
    full = {"accuracy": points[0]["accuracy"], "mflops": model.full_flops / 1e6}
    return {"knob": "threshold", "points": points, "full": full}


def summarise(table: dict[str, Any]) -> dict[str, Any]:
    """The default operating point against the dense network (the issue's targets)."""
    full = table["full"]
    point = operating_point(table, table["default_knobs"]["threshold"])
    return {
        "dense_accuracy": full["accuracy"],
        "default": {
            "threshold": point["value"], "accuracy": point["accuracy"], "mflops": point["mflops"],
            "flops_saving": 1 - point["mflops"] / full["mflops"],
            "conv_saving": 1 - point["conv_share"],
            "drop_points": 100 * (full["accuracy"] - point["accuracy"]),
        },
    }  # fmt: skip
