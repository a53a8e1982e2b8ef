"""A multi-exit residual CNN: output-adaptive inference by early exiting.

Papers: BranchyNet (Teerapittayanon et al., 2016, arXiv:1709.01686), Shallow-Deep Networks
(SDN, Kaya et al., 2019, arXiv:1810.07052), MSDNet (Huang et al., 2018, arXiv:1703.09844).

The backbone is a ResNet-9-style network (Page, "How to train your ResNet", 2018) at half
width with one extra residual block: six stages of equal cost, each followed by a small exit
classifier. At batch size 1 :meth:`EarlyExitResNet.trace` runs stage by stage and stops at the
first exit whose confidence reaches the threshold; later stages are not computed. The
all-exits record (:meth:`EarlyExitResNet.trace_all`) keeps every exit's prediction so that a
new threshold re-decides instantly (:func:`redecide`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core import Curve, DynamicModel, Explained, Knob, Trace, Unit, register, timed
from models.cost import count_flops

CRITERIA = ("max_prob", "entropy", "margin")
CRITERION_LABELS = {
    "max_prob": "max softmax probability",
    "entropy": "1 - normalised entropy",
    "margin": "top-1 minus top-2 probability",
}


def confidence(probs: torch.Tensor | np.ndarray, criterion: str) -> torch.Tensor:
    """Exit confidence in [0, 1] from class probabilities ``(..., C)``; higher = surer.

    ``max_prob``: the top probability (BranchyNet/SDN); ``entropy``: one minus the entropy
    divided by log C (BranchyNet's criterion, rescaled so one threshold range fits all);
    ``margin``: top-1 minus top-2 probability.
    """
    p = torch.as_tensor(probs, dtype=torch.float32)
    if criterion == "max_prob":
        return p.max(-1).values
    if criterion == "entropy":
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
        return (1 - ent / math.log(p.shape[-1])).clamp(0, 1)
    if criterion == "margin":
        top2 = p.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


STATIC_THRESHOLD = 1.0  # no early exit may fire: the static network, early exits not even evaluated


def exits_enabled(threshold: float) -> bool:
    """Whether early exits are evaluated at all. At 1.0 they are not: a softmax can saturate to
    exactly 1.0 in float32, and 1.0 must mean "the static network" without exception."""
    return threshold < STATIC_THRESHOLD


def first_exit(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Index of the first exit whose score reaches ``threshold``; the last exit otherwise.

    Args:
        scores: ``(..., K)`` confidences per exit.
    """
    # float64, as the batch-1 path compares Python floats: both must agree at the boundary
    fires = torch.as_tensor(scores).double() >= threshold
    fires &= exits_enabled(threshold)
    fires[..., -1] = True
    return fires.float().argmax(-1)


def conv_bn(cin: int, cout: int, *, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + f(x)`` with two 3x3 conv-BN-ReLU layers (ResNet-9's residual block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ExitHead(nn.Module):
    """Exit classifier: 1x1 conv to ``width`` channels, avg+max pooling, linear (SDN-like)."""

    def __init__(self, cin: int, num_classes: int, *, width: int = 128) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(x)  # (B, width, H, W)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)  # (B, 2*width)
        return self.fc(pooled)


class FinalHead(nn.Module):
    """The last exit, ResNet-9's head: global max pooling, a linear layer and Page's 1/8 logit
    scale (max-pooled features are large; unscaled logits start training unstably)."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.amax((2, 3))) * 0.125


@register
class EarlyExitResNet(DynamicModel):
    """Six equal-cost stages, an exit after each; stop at the first confident exit."""

    name = "early_exit"
    title = "Early exits (multi-exit ResNet)"
    category = "output"
    papers = (
        "BranchyNet: Teerapittayanon et al., ICPR 2016, arXiv:1709.01686",
        "Shallow-Deep Networks: Kaya et al., ICML 2019, arXiv:1810.07052",
        "MSDNet: Huang et al., ICLR 2018, arXiv:1703.09844",
    )
    knobs = (
        Knob(
            "criterion", "Exit criterion", 0, 0, 0, "max_prob",
            "How an exit measures its confidence.", instant=True, options=CRITERIA,
            option_labels=tuple(CRITERION_LABELS[c] for c in CRITERIA),
        ),
        Knob(
            "threshold", "Confidence threshold", 0.0, 1.0, 0.01, 0.9,
            "An exit fires when its confidence reaches this value; 1.0 runs the whole network.",
            instant=True,
        ),
    )  # fmt: skip

    static_knobs: ClassVar[dict[str, Any]] = {"threshold": STATIC_THRESHOLD}
    cost_knob = "threshold"

    def __init__(self, *, num_classes: int = 10, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stages = nn.ModuleList(
            [
                nn.Sequential(conv_bn(3, w1 // 2), conv_bn(w1 // 2, w1, pool=True)),  # (B, w1, 16, 16)
                Residual(w1),
                conv_bn(w1, w2, pool=True),  # (B, w2, 8, 8)
                Residual(w2),
                conv_bn(w2, w3, pool=True),  # (B, w3, 4, 4)
                Residual(w3),
            ]
        )
        stage_channels = (w1, w1, w2, w2, w3, w3)
        heads = [ExitHead(c, num_classes) for c in stage_channels[:-1]]
        self.exits = nn.ModuleList([*heads, FinalHead(w3, num_classes)])
        self.stage_flops, self.exit_flops = self._unit_flops()

    def unit_modules(self) -> dict[str, nn.Module]:
        stages = {f"stage{k}": m for k, m in enumerate(self.stages)}
        return {**stages, **{f"exit{k}": m for k, m in enumerate(self.exits)}}

    @property
    def monitor_names(self) -> list[str]:
        return [f"exit{k}" for k in range(self.num_exits)]

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @torch.no_grad()
    def _unit_flops(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """FLOPs of each stage and exit at the input size. Shapes here do not depend on the
        input's content, so the count on a probe input equals the count on every input."""
        was_training = self.training
        self.eval()
        h = torch.zeros(1, 3, self.input_size, self.input_size)
        stage_flops, exit_flops = [], []
        for stage, head in zip(self.stages, self.exits, strict=True):
            h, flops = count_flops(stage, h)
            stage_flops.append(flops)
            exit_flops.append(count_flops(head, h)[1])
        self.train(was_training)
        return tuple(stage_flops), tuple(exit_flops)

    @property
    def full_flops(self) -> int:
        """The static network: every stage and only the final classifier."""
        return sum(self.stage_flops) + self.exit_flops[-1]

    @property
    def max_flops(self) -> int:
        return self.cost_to_exit(self.num_exits - 1)

    def redecide(self, record: Trace, **knobs: Any) -> Trace:
        return redecide(record, **self.knob_values(**knobs))

    def cost_to_exit(self, k: int, *, dynamic: bool = True) -> int:
        """FLOPs to produce exit ``k``'s answer: stages ``0..k`` plus the exits evaluated on
        the way (all of ``0..k`` when deciding dynamically, only ``k`` for a static exit).
        ``cost_to_exit(K - 1, dynamic=False)`` is the static network."""
        heads = sum(self.exit_flops[: k + 1]) if dynamic else self.exit_flops[k]
        return sum(self.stage_flops[: k + 1]) + heads

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every exit, ``(B, K, C)``: the batched path for training and sweeps."""
        logits = []
        for stage, head in zip(self.stages, self.exits, strict=True):
            x = stage(x)
            logits.append(head(x))
        return torch.stack(logits, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The static network's logits (last exit)."""
        for stage in self.stages:
            x = stage(x)
        return self.exits[-1](x)

    def explained_forward(self, trace: Trace, *, static: bool = False) -> Explained:
        """The exit that fired (or the last one): stages up to it, then its classifier; Grad-CAM
        on the stage that feeds that exit."""
        k = self.num_exits - 1 if static else trace.extras["fired_exit"]
        tap = nn.Identity()

        def forward(x: torch.Tensor) -> torch.Tensor:
            for stage in self.stages[: k + 1]:
                x = stage(x)
            return self.exits[k](tap(x))

        last = k == self.num_exits - 1
        return Explained(forward, tap, f"exit {k + 1}" + (" (the last)" if last else ""), static=last)

    def evaluate_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"exit_probs": self.forward_all(x).softmax(-1)}

    def sweep(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
        return sweep_exits(self, outputs["exit_probs"], labels)

    def summarise(self, table: dict[str, Any], val_table: dict[str, Any]) -> dict[str, Any]:
        return summarise(table, val_table)

    def curves(self, table: dict[str, Any]) -> tuple[Curve, ...]:
        """One threshold curve per exit criterion."""
        return tuple(Curve(CRITERION_LABELS[c], "threshold", {"criterion": c}, table["criteria"][c]) for c in CRITERIA)

    def calibrate(self, val_table: dict[str, Any]) -> dict[str, Any]:
        return calibrate(val_table)

    def training_loss(
        self, x: torch.Tensor, y: torch.Tensor, *, exit_weight: float = 1.0, distill: float = 0.5
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Cross-entropy at every exit (MSDNet's equal weights when ``exit_weight`` is 1; lower
        it to favour the last exit) plus ``distill`` times self-distillation of the early exits
        towards the last one (BYOT, Zhang et al., 2019, arXiv:1905.08094)."""
        logits = self.forward_all(x).float()  # (B, K, C)
        ce = torch.stack([F.cross_entropy(logits[:, k], y, label_smoothing=0.1) for k in range(self.num_exits)])
        temp = 3.0
        teacher = (logits[:, -1:].detach() / temp).log_softmax(-1)
        student = (logits[:, :-1] / temp).log_softmax(-1)
        kd = F.kl_div(student, teacher.expand_as(student), log_target=True, reduction="batchmean") * temp**2
        loss = exit_weight * ce[:-1].sum() + ce[-1] + distill * kd / (self.num_exits - 1)
        return loss, {"loss": loss.detach(), **{f"ce{k}": c.detach() for k, c in enumerate(ce)}}

    @torch.inference_mode()
    def trace(self, x: torch.Tensor, **knobs: Any) -> Trace:
        """Batch-1 dynamic inference: stop at the first exit that is confident enough."""
        self.check_input(x)
        values = self.knob_values(**knobs)
        threshold, criterion = values["threshold"], values["criterion"]

        dynamic = exits_enabled(threshold)
        last = self.num_exits - 1

        def run() -> tuple[int, torch.Tensor, list[float | None]]:
            h, scores = x, []
            for k, (stage, head) in enumerate(zip(self.stages, self.exits, strict=True)):
                h = stage(h)
                if not dynamic and k < last:
                    scores.append(None)  # static setting: early exits are not evaluated
                    continue
                probs = head(h).softmax(-1)[0]
                scores.append(float(confidence(probs, criterion)))
                if scores[-1] >= threshold or k == last:
                    return k, probs, scores
            raise AssertionError("unreachable: the last exit always fires")

        (fired, probs, scores), latency = timed(run)
        return self._make_trace(values, fired, probs.numpy(), scores, latency, exit_probs=None)

    @torch.inference_mode()
    def trace_all(self, x: torch.Tensor) -> Trace:
        """Run every stage and every exit once and keep all predictions, so :func:`redecide`
        answers any criterion and threshold without a new forward pass."""
        self.check_input(x)
        exit_probs = self.forward_all(x).softmax(-1)[0].numpy()  # (K, C)
        record = self._make_trace(
            self.knob_values(threshold=STATIC_THRESHOLD), self.num_exits - 1, exit_probs[-1],
            [None] * self.num_exits, None, exit_probs,
        )  # fmt: skip
        return redecide(record, **record.knobs)

    def _make_trace(
        self,
        knobs: dict[str, Any],
        fired: int,
        probs: np.ndarray,
        scores: list[float | None],
        latency_ms: float | None,
        exit_probs: np.ndarray | None,
    ) -> Trace:
        dynamic = exits_enabled(knobs["threshold"])
        units = exit_units(self.stage_flops, self.exit_flops, fired, scores)
        extras = {
            "fired_exit": fired,
            "num_exits": self.num_exits,
            "exit_probs": exit_probs,  # (K, C) all-exits record, or None on the dynamic path
            "stage_flops": list(self.stage_flops),
            "exit_flops": list(self.exit_flops),
            "cost_to_exit": [self.cost_to_exit(k) for k in range(self.num_exits)],
        }
        flops = self.cost_to_exit(fired) if dynamic else self.full_flops
        return Trace(self.name, knobs, probs, units, flops, self.full_flops, latency_ms, extras)


def exit_units(
    stage_flops: Sequence[int], exit_flops: Sequence[int], fired: int, scores: Sequence[float | None]
) -> tuple[Unit, ...]:
    """Stage and exit units in execution order; those after the fired exit did not run, and an
    exit whose score is None was not evaluated (the dynamic path stopped, or exits are off)."""
    last = len(exit_flops) - 1
    units: list[Unit] = []
    for k in range(last + 1):
        ran = k <= fired
        score = scores[k] if k < len(scores) else None
        evaluated = ran and (score is not None or k == last)
        full_exit = exit_flops[k] if k == last else 0  # the static network runs the last head only
        units.append(Unit(f"stage{k}", "block", ran, None, ran, stage_flops[k] if ran else 0, stage_flops[k]))
        units.append(
            Unit(f"exit{k}", "exit", evaluated, score, k == fired, exit_flops[k] if evaluated else 0, full_exit)
        )
    return tuple(units)


def redecide(record: Trace, *, threshold: float, criterion: str) -> Trace:
    """Re-decide an all-exits record (:meth:`EarlyExitResNet.trace_all`) for new knobs, with no
    forward pass. Latency is None: it is measured only on the real dynamic path."""
    exit_probs = record.extras["exit_probs"]
    if exit_probs is None:
        raise ValueError("redecide needs the all-exits record from trace_all")
    scores = confidence(exit_probs, criterion)
    fired = int(first_exit(scores, threshold))
    # What the batch-1 path would have scored: exits up to the fired one (only the last when
    # exits are off). The figures still show every exit's answer from exit_probs.
    last = len(scores) - 1
    evaluated = [
        float(s) if k <= fired and (exits_enabled(threshold) or k == last) else None for k, s in enumerate(scores)
    ]
    units = exit_units(record.extras["stage_flops"], record.extras["exit_flops"], fired, evaluated)
    extras = {**record.extras, "fired_exit": fired, "all_scores": scores.tolist()}
    knobs = {"criterion": criterion, "threshold": float(threshold)}
    flops = record.extras["cost_to_exit"][fired] if exits_enabled(threshold) else record.full_flops
    return Trace(record.model, knobs, exit_probs[fired], units, flops, record.full_flops, None, extras)


THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.01), 2)  # the eval grid = the slider's steps


def sweep_exits(model: EarlyExitResNet, exit_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Accuracy and mean cost of the exit policy for every criterion and threshold on the grid.

    Args:
        exit_probs: ``(N, K, C)`` every exit's probabilities on a labelled split.
        labels: ``(N,)`` true classes.

    Returns:
        The eval table: per criterion a list of points (threshold, accuracy, mean MFLOPs,
        share of images per exit, per-class exit counts, overthinking counts), the static
        exits, and the full network.
    """
    n, k_total, num_classes = exit_probs.shape
    correct = exit_probs.argmax(-1) == labels[:, None]  # (N, K)
    cost = torch.tensor([model.cost_to_exit(k) for k in range(k_total)], dtype=torch.float64)
    last_right = correct[:, -1]
    rows = torch.arange(n)
    criteria = {}
    for criterion in CRITERIA:
        scores = confidence(exit_probs, criterion)  # (N, K)
        points = []
        for t in THRESHOLDS:
            fired = first_exit(scores, float(t))  # (N,)
            right = correct[rows, fired]
            mflops = cost[fired].mean().item() / 1e6 if exits_enabled(float(t)) else model.full_flops / 1e6
            class_exit = torch.zeros(num_classes, k_total, dtype=torch.long)
            class_exit.index_put_((labels, fired), torch.ones_like(fired), accumulate=True)
            points.append(
                {
                    "value": float(t),
                    "accuracy": right.double().mean().item(),
                    "mflops": mflops,
                    "exit_share": (torch.bincount(fired, minlength=k_total).double() / n).tolist(),
                    "class_exit_counts": class_exit.tolist(),
                    # SDN's "overthinking": the exit that fired was right where the last was wrong
                    "early_right_last_wrong": int((right & ~last_right).sum()),
                    "early_wrong_last_right": int((~right & last_right).sum()),
                }
            )
        criteria[criterion] = points
    static = [
        {
            "exit": k,
            "accuracy": correct[:, k].double().mean().item(),
            "mflops": model.cost_to_exit(k, dynamic=False) / 1e6,
        }
        for k in range(k_total)
    ]
    earlier_right = correct[:, :-1].any(1)
    return {
        "knob": "threshold",
        "criterion": "max_prob",
        "points": criteria["max_prob"],
        "criteria": criteria,
        "static_exits": static,
        "full": {"accuracy": static[-1]["accuracy"], "mflops": model.full_flops / 1e6},
        "overthinking": {
            "some_earlier_exit_right_last_wrong": int((earlier_right & ~last_right).sum()),
            "n": n,
        },
    }


def summarise(table: dict[str, Any], val_table: dict[str, Any]) -> dict[str, Any]:
    """The operating points the issue's targets name (max_prob): each threshold is chosen on
    the validation table (the most accurate within the budget there) and read off the test
    table, whose FLOPs are reported as measured."""
    points, full = table["points"], table["full"]
    on_test = {p["value"]: p for p in points}
    val_points, val_full = val_table["points"], val_table["full"]
    half = [p for p in val_points if p["mflops"] <= 0.5 * val_full["mflops"]]
    best_half = on_test[max(half, key=lambda p: p["accuracy"])["value"]] if half else None
    gains = []
    for s in table["static_exits"][:-1]:  # a static exit costs the same on every image
        affordable = [p for p in val_points if p["mflops"] <= s["mflops"]]
        if affordable:
            best = on_test[max(affordable, key=lambda p: p["accuracy"])["value"]]
            gains.append({"exit": s["exit"], "static_accuracy": s["accuracy"], "mflops": s["mflops"],
                          "dynamic_accuracy": best["accuracy"], "dynamic_mflops": best["mflops"], "dynamic_threshold": best["value"],
                          "gain_points": 100 * (best["accuracy"] - s["accuracy"])})  # fmt: skip
    return {
        "last_exit_accuracy": full["accuracy"],
        "best_at_half_flops": best_half and {
            "threshold": best_half["value"], "accuracy": best_half["accuracy"], "mflops": best_half["mflops"],
            "fraction_of_full": best_half["mflops"] / full["mflops"],
            "drop_points": 100 * (full["accuracy"] - best_half["accuracy"]),
        },
        "best_at_half_flops_any_criterion": best_of_criteria(table, val_table, 0.5),
        "dynamic_vs_static_exits": gains,
    }  # fmt: skip


def best_of_criteria(table: dict[str, Any], val_table: dict[str, Any], share: float) -> dict[str, Any] | None:
    """The operating point within ``share`` of the full FLOPs when the criterion is chosen too:
    criterion and threshold both chosen on the validation table (the most accurate there, the
    cheaper on a tie), read off the test table. None without per-criterion tables."""
    if "criteria" not in table or "criteria" not in val_table:
        return None
    budget = share * val_table["full"]["mflops"]
    chosen = [(p["accuracy"], -p["mflops"], c, p["value"]) for c in CRITERIA for p in val_table["criteria"][c]
              if p["mflops"] <= budget]  # fmt: skip
    if not chosen:
        return None
    *_, criterion, value = max(chosen)
    point = next(p for p in table["criteria"][criterion] if p["value"] == value)
    full = table["full"]
    return {"criterion": criterion, "threshold": value, "accuracy": point["accuracy"], "mflops": point["mflops"],
            "fraction_of_full": point["mflops"] / full["mflops"],
            "drop_points": 100 * (full["accuracy"] - point["accuracy"])}  # fmt: skip


def calibrate(table: dict[str, Any], *, tolerance: float = 0.01) -> dict[str, Any]:
    """Default knobs from a *validation* table: the cheapest max_prob threshold whose accuracy
    stays within ``tolerance`` of the last exit's."""
    full = table["full"]["accuracy"]
    ok = [p for p in table["points"] if p["accuracy"] >= full - tolerance]
    best = min(ok, key=lambda p: (p["mflops"], -p["value"]))
    return {"criterion": "max_prob", "threshold": best["value"]}
