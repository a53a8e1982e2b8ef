"""A gated residual network: computation-graph-adaptive inference by skipping blocks.

Papers: ConvNet-AIG (Veit & Belongie, ECCV 2018, arXiv:1711.11503), SkipNet (Wang et al., ECCV
2018, arXiv:1711.09485), BlockDrop (Wu et al., CVPR 2018, arXiv:1711.08393).

The backbone is the early-exit model's (a half-width ResNet-9 with an extra residual block,
:mod:`models.early_exit`) with a second residual block in each of its three stages: six
residual blocks, each preceded by a small gate that looks at the block's input (global average
pooling, two linear layers, ConvNet-AIG's gate) and gives the probability that the block is
needed. At inference a block runs when that probability reaches the ``threshold`` knob; a
skipped block is not computed, its input passes on unchanged. Threshold 0 is the static
network: every block runs and no gate is evaluated.

Training (ConvNet-AIG): Gumbel-sigmoid gate samples with straight-through hard decisions, plus
a loss that pulls each gate's execution rate towards a target rate. As in SkipNet and
BlockDrop, the backbone can start from a trained network (``models.train --init`` with the
early-exit model's weights, mapped by :meth:`GatedResNet.init_from`; the new blocks then start
as identities). The shipped weights were trained from scratch (their card's lineage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from models.core import DynamicModel, Explained, Knob, Trace, Unit, register, timed
from models.cost import count_flops
from models.early_exit import FinalHead, Residual, conv_bn

STATIC_THRESHOLD = 0.0  # every block runs and no gate is evaluated: the static network
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.05), 2)  # the eval grid = the slider's steps
BLOCKS_PER_STAGE = 2
# Grad-CAM weighs the 8x8 map that leaves stage 2: the input of the downsampling in front of this block
TAP_BEFORE = 2 * BLOCKS_PER_STAGE


def gates_enabled(threshold: float) -> bool:
    return threshold > STATIC_THRESHOLD


class Gate(nn.Module):
    """ConvNet-AIG's gate: global average pooling, linear, BN, ReLU, linear to one logit.

    Its bias starts at +2 (probability 0.88): a new gate first lets its block run.
    """

    def __init__(self, channels: int, *, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.constant_(self.fc2.bias, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate logits ``(B,)`` from block inputs ``(B, C, H, W)``."""
        return self.fc2(F.relu(self.bn(self.fc1(x.mean((2, 3)))))).squeeze(1)


def gumbel_gate(logits: torch.Tensor, *, tau: float = 1.0) -> torch.Tensor:
    """Straight-through Gumbel-sigmoid: hard 0/1 decisions forward, soft gradients backward."""
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + u.log() - (-u).log1p()) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


@register
class GatedResNet(DynamicModel):
    """Six gated residual blocks in three stages; a block runs when its gate says it is needed."""

    name = "block_skip"
    title = "Block skipping (gated ResNet)"
    category = "graph"
    papers = (
        "ConvNet-AIG: Veit & Belongie, ECCV 2018, arXiv:1711.11503",
        "SkipNet: Wang et al., ECCV 2018, arXiv:1711.09485",
        "BlockDrop: Wu et al., CVPR 2018, arXiv:1711.08393",
    )
    knobs = (
        Knob(
            "threshold", "Gate threshold", 0.0, 1.0, 0.05, 0.5,
            "A block runs when its gate's probability reaches this value; 0 runs every block.",
        ),
    )  # fmt: skip
    static_knobs: ClassVar[dict[str, Any]] = {"threshold": STATIC_THRESHOLD}
    cost_knob = "threshold"
    cost_direction = -1  # a higher threshold skips more blocks

    def __init__(self, *, num_classes: int = 10, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(conv_bn(3, w1 // 2), conv_bn(w1 // 2, w1, pool=True))  # (B, w1, 16, 16)
        self.downs = nn.ModuleList([conv_bn(w1, w2, pool=True), conv_bn(w2, w3, pool=True)])  # to 8x8, 4x4
        channels = [c for c in widths for _ in range(BLOCKS_PER_STAGE)]
        self.blocks = nn.ModuleList([Residual(c) for c in channels])
        self.gates = nn.ModuleList([Gate(c) for c in channels])
        self.head = FinalHead(w3, num_classes)
        self.stage_shapes = [
            f"{c} channels, {self.input_size // 2**s}x{self.input_size // 2**s}" for s, c in enumerate(widths, 1)
        ]
        self.flops = self._unit_flops()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def stage_of(self, i: int) -> int:
        return i // BLOCKS_PER_STAGE

    def _before(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """The downsampling layer in front of block ``i`` when it opens stage 2 or 3."""
        s = self.stage_of(i)
        return self.downs[s - 1](h) if i % BLOCKS_PER_STAGE == 0 and s > 0 else h

    def unit_modules(self) -> dict[str, nn.Module]:
        fixed = {"stem": self.stem, "down1": self.downs[0], "down2": self.downs[1], "head": self.head}
        blocks = {f"block{i}": b for i, b in enumerate(self.blocks)}
        return {**fixed, **blocks, **{f"gate{i}": g for i, g in enumerate(self.gates)}}

    def _layers(self) -> list[tuple[str, nn.Module]]:
        """Execution order: stem, then per stage (a downsampling layer first from stage 2 on)
        each block's gate and block, then the head."""
        order: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i in range(self.num_blocks):
            s = self.stage_of(i)
            if i % BLOCKS_PER_STAGE == 0 and s > 0:
                order.append((f"down{s}", self.downs[s - 1]))
            order += [(f"gate{i}", self.gates[i]), (f"block{i}", self.blocks[i])]
        return [*order, ("head", self.head)]

    @torch.no_grad()
    def _unit_flops(self) -> dict[str, int]:
        """FLOPs of every unit at the input size (shapes do not depend on content)."""
        was_training = self.training
        self.eval()
        h = torch.zeros(1, 3, self.input_size, self.input_size)
        flops = {}
        for name, module in self._layers():
            out, flops[name] = count_flops(module, h)
            if not name.startswith("gate"):
                h = out
        self.train(was_training)
        return flops

    @property
    def full_flops(self) -> int:
        """The static network: every block, no gate."""
        return sum(f for name, f in self.flops.items() if not name.startswith("gate"))

    @property
    def max_flops(self) -> int:
        return sum(self.flops.values())

    # --- training ----------------------------------------------------------------------------

    def init_from(self, path: Any) -> dict[str, list[str]]:
        """Start from trained weights: this model's own, or the early-exit model's backbone
        (its stages 0-5 become stem, block 0, down 1, block 2, down 2, block 4; its last exit
        the head). New blocks start close to identities. Returns the modules left new."""
        state = load_file(str(path))
        if any(k.startswith("exits.") for k in state):
            renames = {"stages.0.": "stem.", "stages.1.": "blocks.0.", "stages.2.": "downs.0.",
                       "stages.3.": "blocks.2.", "stages.4.": "downs.1.", "stages.5.": "blocks.4.",
                       f"exits.{5}.": "head."}  # fmt: skip
            state = {
                new + k.removeprefix(old): v
                for k, v in state.items()
                for old, new in renames.items()
                if k.startswith(old)
            }
            for i in range(1, self.num_blocks, BLOCKS_PER_STAGE):
                # near-identity x + f(x): a BN scale of exactly 0 would leave the trailing ReLU
                # at 0, where its gradient is 0, and the block would never learn
                nn.init.constant_(self.blocks[i].body[1][1].weight, 0.05)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"weights {path} do not fit {self.name}: unexpected {unexpected[:5]}")
        return {"new": sorted({".".join(k.split(".")[:2]) for k in missing})}

    def forward_train(
        self, x: torch.Tensor, *, all_on_share: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(B, C)``, sampled gate values ``(B, N)`` (hard forward, soft backward) and
        which rows were gated ``(B,)``. Every block is computed and multiplied by its gate, so
        skipped rows still get a straight-through gradient (ConvNet-AIG). A random
        ``all_on_share`` of the rows runs every block, so the layers after a block also learn
        the static network's path (which threshold 0 serves)."""
        gated = torch.rand(x.shape[0], device=x.device) >= all_on_share  # (B,)
        h = self.stem(x)
        decisions = []
        for i, (gate, block) in enumerate(zip(self.gates, self.blocks, strict=True)):
            h = self._before(i, h)
            g = torch.where(gated, gumbel_gate(gate(h).float()), 1.0)  # (B,)
            decisions.append(g)
            h = h + g.to(h.dtype)[:, None, None, None] * block.body(h)
        return self.head(h), torch.stack(decisions, 1), gated

    def training_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target_rate: float = 0.5,
        rate_weight: float = 2.0,
        all_on_share: float = 0.25,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Cross-entropy plus ConvNet-AIG's target-rate loss: the squared gap between each gate's
        execution rate over the gated rows of the batch and ``target_rate``, summed over gates."""
        logits, gates, gated = self.forward_train(x, all_on_share=all_on_share)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        if not gated.any():  # every row ran every block: no rate to steer
            rates = gates.new_ones(self.num_blocks)
            rate_loss = gates.new_zeros(())
        else:
            rates = gates[gated].mean(0)  # (N,)
            rate_loss = ((rates - target_rate) ** 2).sum()
        loss = ce + rate_weight * rate_loss
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "rate": rates.mean().detach()}

    # --- inference ---------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The static network's logits: every block, no gate."""
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = self._before(i, h)
            h = block(h)
        return self.head(h)

    @torch.inference_mode()
    def trace(self, x: torch.Tensor, **knobs: Any) -> Trace:
        """Batch-1 dynamic inference: each block runs only if its gate reaches the threshold."""
        self.check_input(x)
        values = self.knob_values(**knobs)
        threshold = values["threshold"]
        dynamic = gates_enabled(threshold)

        def run() -> tuple[torch.Tensor, list[float | None], list[bool]]:
            h, probs, ran = self.stem(x), [], []
            for i, (gate, block) in enumerate(zip(self.gates, self.blocks, strict=True)):
                h = self._before(i, h)
                p = float(torch.sigmoid(gate(h))) if dynamic else None
                ran.append(p is None or p >= threshold)
                probs.append(p)
                if ran[-1]:
                    h = block(h)
            return self.head(h).softmax(-1)[0], probs, ran

        (probs, gate_probs, ran), latency = timed(run)
        units = block_units(self.flops, gate_probs, ran)
        extras = {
            "gate_probs": gate_probs,
            "executed": ran,
            "blocks_per_stage": BLOCKS_PER_STAGE,
            "stage_shapes": self.stage_shapes,  # channels x height x width of each stage
            "block_flops": [self.flops[f"block{i}"] for i in range(self.num_blocks)],
        }
        flops = sum(u.flops for u in units)
        return Trace(self.name, values, probs.numpy(), units, flops, self.full_flops, latency, extras)

    def explained_forward(self, trace: Trace, *, static: bool = False) -> Explained:
        """The blocks the run executed (every block when ``static``); Grad-CAM on the 8x8
        feature map that leaves stage 2 (the input of the last downsampling layer)."""
        ran = [True] * self.num_blocks if static else list(trace.extras["executed"])
        tap = nn.Identity()

        def forward(x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            for i, block in enumerate(self.blocks):
                h = self._before(i, tap(h) if i == TAP_BEFORE else h)
                if ran[i]:
                    h = block(h)
            return self.head(h)

        what = "every block" if static else f"the {sum(ran)} blocks this image ran"
        return Explained(forward, tap, what, static=all(ran))

    @torch.inference_mode()
    def forward_dynamic(self, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batched version of :meth:`trace`: each block runs on the rows whose gate
        reaches the threshold (real skipping, as at batch size 1).

        Returns:
            probs ``(B, C)``, executed ``(B, N)`` bool, gate probabilities ``(B, N)`` (NaN when
            gates are off).
        """
        dynamic = gates_enabled(threshold)
        h = self.stem(x)
        b = x.shape[0]
        ran = torch.ones(b, self.num_blocks, dtype=torch.bool, device=x.device)
        gate_probs = torch.full((b, self.num_blocks), float("nan"), device=x.device)
        for i, (gate, block) in enumerate(zip(self.gates, self.blocks, strict=True)):
            h = self._before(i, h)
            if dynamic:
                gate_probs[:, i] = torch.sigmoid(gate(h)).float()
                ran[:, i] = gate_probs[:, i].double() >= threshold  # as trace compares Python floats
            rows = ran[:, i].nonzero().squeeze(1)
            if len(rows) == b:
                h = block(h)
            elif len(rows):
                h = h.index_copy(0, rows, block(h.index_select(0, rows)))
        return self.head(h).softmax(-1), ran, gate_probs

    def evaluate_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities ``(B, T, C)`` and executed blocks ``(B, T, N)`` at every threshold on
        the eval grid (one batched dynamic pass per threshold)."""
        runs = [self.forward_dynamic(x, float(t)) for t in THRESHOLDS]
        return {
            "probs": torch.stack([r[0] for r in runs], 1),
            "executed": torch.stack([r[1] for r in runs], 1),
        }

    @property
    def monitor_names(self) -> list[str]:
        return ["all_blocks", "threshold_0.5"]

    def monitor_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Every block on, and gated at threshold 0.5: ``(B, 2, C)``, logged while training."""
        return torch.stack([self.forward_dynamic(x, 0.0)[0], self.forward_dynamic(x, 0.5)[0]], 1)

    def sweep(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
        return sweep_blocks(self, outputs["probs"], outputs["executed"], labels)

    def summarise(self, table: dict[str, Any], val_table: dict[str, Any]) -> dict[str, Any]:
        return summarise(table)  # the default threshold, which calibrate chose on val_table

    def calibrate(self, val_table: dict[str, Any]) -> dict[str, Any]:
        return calibrate(val_table)


def block_units(flops: dict[str, int], gate_probs: Sequence[float | None], ran: Sequence[bool]) -> tuple[Unit, ...]:
    """Units in execution order. Fixed layers always run; a gate ran when gates are on
    (``gate_probs[i]`` not None); a block ran when ``ran[i]``."""
    units = []
    for name, f in flops.items():
        if name.startswith("gate"):
            i = int(name[4:])
            on = gate_probs[i] is not None
            units.append(Unit(name, "gate", on, gate_probs[i], on and ran[i], f if on else 0, 0))
        elif name.startswith("block"):
            i = int(name[5:])
            units.append(Unit(name, "block", ran[i], gate_probs[i], ran[i], f if ran[i] else 0, f))
        else:
            units.append(Unit(name, "layer", True, None, True, f, f))
    return tuple(units)


def sweep_blocks(
    model: GatedResNet, probs: torch.Tensor, executed: torch.Tensor, labels: torch.Tensor, *, extremes: int = 6
) -> dict[str, Any]:
    """Accuracy and mean cost at every threshold of the grid, with how the blocks were used.

    Args:
        probs: ``(N, T, C)`` class probabilities at each threshold.
        executed: ``(N, T, B)`` which blocks ran.
        labels: ``(N,)`` true classes.
        extremes: how many of the cheapest and the dearest images to name per threshold.

    Returns:
        The eval table: per threshold the accuracy, mean MFLOPs, a histogram of blocks run,
        per-block execution rates, class x block usage, and the test images (indices) that took
        the cheapest and the most expensive paths; ``full`` is threshold 0 (every block).
    """
    num_blocks = executed.shape[-1]
    num_classes = probs.shape[-1]
    block_flops = torch.tensor([model.flops[f"block{i}"] for i in range(num_blocks)], dtype=torch.float64)
    fixed = model.full_flops - block_flops.sum().item()
    gate_flops = sum(model.flops[f"gate{i}"] for i in range(num_blocks))
    class_counts = torch.bincount(labels, minlength=num_classes).double().clamp(min=1)
    points = []
    for t, value in enumerate(THRESHOLDS):
        ran = executed[:, t]  # (N, B)
        flops = fixed + ran.double() @ block_flops + (gate_flops if gates_enabled(float(value)) else 0)
        right = probs[:, t].argmax(-1) == labels
        usage = torch.zeros(num_classes, num_blocks, dtype=torch.float64).index_add_(0, labels, ran.double())
        order = torch.argsort(flops, stable=True)

        def named(rows: torch.Tensor, flops=flops, right=right) -> list[dict[str, Any]]:
            return [{"index": int(r), "label": int(labels[r]), "mflops": flops[r].item() / 1e6,
                     "correct": bool(right[r])} for r in rows]  # fmt: skip

        points.append(
            {
                "value": float(value),
                "accuracy": right.double().mean().item(),
                "mflops": flops.mean().item() / 1e6,
                "blocks_histogram": torch.bincount(ran.sum(1), minlength=num_blocks + 1).tolist(),
                "block_rate": ran.double().mean(0).tolist(),
                "class_block_rate": (usage / class_counts[:, None]).tolist(),
                "cheapest": named(order[:extremes]),
                "dearest": named(order.flip(0)[:extremes]),
            }
        )
    assert points[0]["value"] == STATIC_THRESHOLD, "the grid starts with every block on"
    full = {"accuracy": points[0]["accuracy"], "mflops": model.full_flops / 1e6}
    return {"knob": "threshold", "points": points, "full": full}


def operating_point(table: dict[str, Any], value: float) -> dict[str, Any]:
    return min(table["points"], key=lambda p: abs(p["value"] - value))


def summarise(table: dict[str, Any]) -> dict[str, Any]:
    """The default operating point against every block on (the issue's targets)."""
    full = table["full"]
    point = operating_point(table, table["default_knobs"]["threshold"])
    return {
        "all_blocks_accuracy": full["accuracy"],
        "default": {
            "threshold": point["value"], "accuracy": point["accuracy"], "mflops": point["mflops"],
            "flops_saving": 1 - point["mflops"] / full["mflops"],
            "drop_points": 100 * (full["accuracy"] - point["accuracy"]),
            "mean_blocks": float(np.dot(np.arange(len(point["blocks_histogram"])), point["blocks_histogram"])
                                 / sum(point["blocks_histogram"])),
        },
    }  # fmt: skip


def calibrate(table: dict[str, Any], *, tolerance: float = 0.01) -> dict[str, Any]:
    """Default threshold from a *validation* table: the cheapest setting whose accuracy stays
    within ``tolerance`` of every block on."""
    full = table["full"]["accuracy"]
    ok = [p for p in table["points"] if p["accuracy"] >= full - tolerance]
    best = min(ok, key=lambda p: (p["mflops"], -p["value"]))
    return {"threshold": best["value"]}
