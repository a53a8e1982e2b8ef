"""The core interface every dynamic model implements: Knob, Unit, Trace, DynamicModel, registry.

One record flows from a model to the screen: the :class:`Trace`. It is plain data (numpy
arrays, floats, strings) so it caches cheaply, tests easily and exports as JSON. Knobs are
arguments of ``trace``, never state on the model, because a loaded model is shared by every
browser session (unlike ToMe's ``model.r``).

The registry follows timm: ``@register`` on the class, ``get(name)`` and ``available()``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_DIR = ASSETS / "weights"
EVAL_DIR = ASSETS / "eval"
CATEGORIES = ("output", "graph", "input")  # the survey's taxonomy


def eval_table_path(name: str, split: str = "test") -> Path:
    """A model's eval table as ``python -m models.evaluate --write`` writes it: the test
    split's (what the pages show), or the validation split's (what the default knobs and the
    summary's settings were chosen on)."""
    if split not in ("test", "val"):
        raise ValueError(f"eval tables are written for the test and val splits, not {split!r}")
    return EVAL_DIR / (f"{name}.json" if split == "test" else f"{name}.val.json")


@dataclass(frozen=True)
class Knob:
    """One slider (or, with ``options``, one choice) that drives a dynamic decision.

    ``instant`` is True when a new value re-decides an existing trace without a new forward
    pass (an early-exit threshold: every exit's prediction was recorded once).
    """

    key: str
    label: str
    lo: float
    hi: float
    step: float
    default: float | str
    help: str
    instant: bool = False
    options: tuple[str, ...] = ()
    option_labels: tuple[str, ...] = ()  # how the UI names each option

    @property
    def counts(self) -> bool:
        """A knob of whole numbers (experts per token, tokens merged): its step is a whole number."""
        return not self.options and self.step >= 1 and float(self.step).is_integer()

    def validate(self, value: Any) -> float | str:
        """The value as a float (or option string), or ValueError when out of range."""
        if self.options:
            if value not in self.options:
                raise ValueError(f"{self.key} must be one of {self.options}, got {value!r}")
            return value
        value = float(value)
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{self.key}={value} outside [{self.lo}, {self.hi}]")
        if self.counts and not value.is_integer():
            raise ValueError(f"{self.key} counts whole steps, got {value}")  # a trace must record what ran
        return value


@dataclass(frozen=True)
class Unit:
    """One dynamic decision point and what it cost for this input.

    Attributes:
        name: ``exit3``, ``stage2``, ...
        kind: ``exit``, ``block``, ``gate``, ``expert``, ``token``, ``pixel``, or ``layer``
            (computation that always runs, listed so the units add up to the trace's FLOPs).
        executed: whether the unit's computation ran.
        score: the number the knob acts on (an exit's confidence), if any.
        decision: what was decided (an exit fired: bool; later kinds: masks, expert ids).
        flops: FLOPs executed in this unit for this input.
        full_flops: FLOPs the static network spends here.
    """

    name: str
    kind: str
    executed: bool
    score: float | None
    decision: Any
    flops: int
    full_flops: int


@dataclass(frozen=True)
class Trace:
    """What a dynamic model computed for one input, in execution order."""

    model: str
    knobs: dict[str, Any]
    probs: np.ndarray  # (num_classes,)
    units: tuple[Unit, ...]
    flops: int
    full_flops: int
    latency_ms: float | None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    @property
    def mflops(self) -> float:
        return self.flops / 1e6

    @property
    def full_mflops(self) -> float:
        return self.full_flops / 1e6

    @property
    def fraction(self) -> float:
        return self.flops / self.full_flops

    def to_json(self) -> str:
        def plain(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, np.generic):
                return value.item()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            return value

        return json.dumps(plain(asdict(self)))


@dataclass(frozen=True)
class Explained:
    """A forward function ``(B, 3, H, W) -> (B, C)`` logits, the feature map Grad-CAM weighs,
    and what the function is, in words.

    ``tap`` is an identity module that only ``forward`` calls, on that feature map. Grad-CAM
    hooks the tap, never a layer of the model: the model is shared by every session of the
    app, and a hook on one of its layers would fire in other sessions' runs at the same time
    (captum then raised, or could read another image's activations). ``static``: the function
    is the static network's (a run whose last exit fired, whose every block ran, whose masks
    kept every position): the page then shows no second row that would explain it again.
    ``tap_centre``: the input pixel on which the tap's first cell is centred, where that is not
    the middle of the cell's square (the transformer's stride-2 convolutions with padding 1:
    pixel 0, one cell every 4 pixels), so that Grad-CAM's map is drawn over the right pixels.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    tap: nn.Identity
    what: str
    static: bool = False
    tap_centre: float | None = None


@dataclass(frozen=True)
class Curve:
    """One accuracy-compute curve of an eval table: ``knob`` swept over ``points`` (each with
    ``value``, ``accuracy``, ``mflops``), the knobs in ``fixed`` held at those values."""

    label: str
    knob: str
    fixed: dict[str, Any]
    points: list[dict[str, Any]]

    def matches(self, knobs: dict[str, Any]) -> bool:
        """Whether ``knobs`` lie on this curve (every fixed knob as measured)."""
        return all(knobs.get(k) == v for k, v in self.fixed.items())

    def knobs_at(self, point: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any]:
        """``knobs`` moved onto ``point`` of this curve."""
        return {**knobs, **self.fixed, self.knob: point["value"]}

    def nearest(self, knobs: dict[str, Any]) -> dict[str, Any]:
        """The measured point closest to ``knobs``' value of the swept knob."""
        return min(self.points, key=lambda p: abs(p["value"] - float(knobs[self.knob])))

    def measured_at(self, knobs: dict[str, Any], *, tolerance: float) -> dict[str, Any] | None:
        """The measured point at ``knobs``' value of the swept knob (within ``tolerance``), or None."""
        point = self.nearest(knobs)
        return point if abs(point["value"] - float(knobs[self.knob])) <= tolerance + 1e-9 else None

    def within_budget(self, mflops: float) -> tuple[dict[str, Any], bool]:
        """The point whose test-set mean compute is closest to ``mflops`` without exceeding it,
        and True; the cheapest point and False when none fits."""
        fits = [p for p in self.points if p["mflops"] <= mflops]
        if not fits:
            return min(self.points, key=lambda p: p["mflops"]), False
        return max(fits, key=lambda p: (p["mflops"], p["accuracy"])), True


@dataclass(frozen=True)
class Card:
    """Model card: what travels with the weights (timm's pretrained cfg, torchvision's meta)."""

    name: str
    title: str
    category: str
    papers: tuple[str, ...]
    classes: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)  # training command, accuracy, sha256, ...

    @property
    def weights(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    @property
    def card_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.json"

    def lineage(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The training runs that made these weights, first run first (the card nests each
        run's start under ``initialised_from``), and the start of the first of them: None
        from scratch, else weights whose own training the card does not record."""
        runs, start = [self.meta["training"]], self.meta.get("initialised_from")
        while start and start.get("training"):
            runs.insert(0, start["training"])
            # a card that does not say where a run started (no key, as cards before the
            # nesting wrote) knows only that it started from other weights
            start = start.get("initialised_from", {"weights": "earlier weights"})
        return runs, start

    def provenance(self) -> str:
        """How these weights were made, from the card: where training started, each run's
        epochs, the last run's device and time; the data; the measured test accuracy. Short
        sentences, as the card's data string has punctuation of its own."""
        run = self.meta.get("training")
        if not run:
            return f"`assets/weights/{self.name}.json` records no training run for these weights."
        runs, start = self.lineage()
        begun = f"starting from `{start['weights']}`" if start else "from scratch"
        accuracy = self.meta.get("test_accuracy")
        tested = "" if accuracy is None else f" Test accuracy: {100 * accuracy:.2f} % top-1 on the CIFAR-10 test split."
        card = f"`assets/weights/{self.name}.json`"
        if len(runs) == 1:
            made = f"These weights were trained {begun} for {run['epochs']} epochs on {run['device']} in {run['seconds']} s"
        else:
            epochs = [str(r["epochs"]) for r in runs]
            made = (
                f"These weights were trained in {len(runs)} runs, each from the weights of the one before: "
                f"{epochs[0]} epochs {begun}, then {', '.join(epochs[1:-1]) + ' and ' if len(runs) > 2 else ''}"
                f"{epochs[-1]}; the last run: {run['epochs']} epochs on {run['device']} in {run['seconds']} s"
            )
        return f"{made} ({card}). Data: {run['data']}.{tested}"


class DynamicModel(nn.Module):
    """Base class of every dynamic model. Subclasses set ``name``, ``title``, ``category``,
    ``papers``, ``knobs`` and implement ``trace``, ``evaluate_batch`` and ``training_loss``.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    category: ClassVar[str]
    papers: ClassVar[tuple[str, ...]]
    knobs: ClassVar[tuple[Knob, ...]]
    static_knobs: ClassVar[dict[str, Any]]  # the setting that turns dynamism off
    cost_knob: ClassVar[str]  # the knob that trades compute for accuracy
    cost_direction: ClassVar[int] = 1  # +1: raising the cost knob never lowers the cost; -1: never raises it
    input_size: ClassVar[int] = 32
    mean: ClassVar[tuple[float, float, float]] = (0.4914, 0.4822, 0.4465)
    std: ClassVar[tuple[float, float, float]] = (0.2470, 0.2435, 0.2616)

    @functools.cached_property
    def card(self) -> Card:
        """Read once per model instance: ``trace`` consults it for default knobs every call."""
        from models.data import CLASSES

        path = WEIGHTS_DIR / f"{self.name}.json"
        meta = json.loads(path.read_text()) if path.exists() else {}
        return Card(
            self.name, self.title, self.category, self.papers, CLASSES,
            self.input_size, self.mean, self.std, meta,
        )  # fmt: skip

    def knob_values(self, **knobs: Any) -> dict[str, Any]:
        """Defaults filled in, every value checked against its knob's range."""
        unknown = set(knobs) - {k.key for k in self.knobs}
        if unknown:
            raise ValueError(f"unknown knobs for {self.name}: {sorted(unknown)}")
        return {k.key: k.validate(knobs.get(k.key, self.default_knob(k))) for k in self.knobs}

    def runs_static(self, **knobs: Any) -> bool:
        """Whether these knobs run the static network: every knob that ``static_knobs`` names
        has its static value (the others then change nothing)."""
        values = self.knob_values(**knobs)
        return all(values[k] == v for k, v in self.static_knobs.items())

    def default_knob(self, knob: Knob) -> float | str:
        """The card's validated operating point when there is one, else the knob's default."""
        return self.card.meta.get("default_knobs", {}).get(knob.key, knob.default)

    @property
    def full_flops(self) -> int:
        """FLOPs of the static network (dynamism off) on one input."""
        raise NotImplementedError

    @property
    def max_flops(self) -> int:
        """FLOPs when every dynamic unit runs. Can exceed ``full_flops``: a hard image that
        passes every exit pays for every exit classifier on top of the static network."""
        raise NotImplementedError

    def trace_all(self, x: torch.Tensor) -> Trace:
        """Models with instant knobs: one pass that records everything :meth:`redecide` needs."""
        raise NotImplementedError

    def redecide(self, record: Trace, **knobs: Any) -> Trace:
        """Models with instant knobs: the trace for new knob values, with no forward pass."""
        raise NotImplementedError

    def unit_modules(self) -> dict[str, nn.Module]:
        """Unit name -> the module that computes it, so tests can see what really ran."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """``trace`` takes one preprocessed image: unit FLOPs are counted at this shape."""
        expected = (1, 3, self.input_size, self.input_size)
        if tuple(x.shape) != expected:
            raise ValueError(f"{self.name}.trace expects a tensor shaped {expected}, got {tuple(x.shape)}")

    def trace(self, x: torch.Tensor, **knobs: Any) -> Trace:
        """Run one image ``(1, 3, H, W)`` dynamically and record every decision."""
        raise NotImplementedError

    def evaluate_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batched outputs from which ``models.evaluate`` sweeps the knobs."""
        raise NotImplementedError

    def monitor_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K, C)`` probabilities of the K outputs worth logging while training, named by
        :attr:`monitor_names`; by default the first output of :meth:`evaluate_batch`."""
        return next(iter(self.evaluate_batch(x).values()))

    @property
    def monitor_names(self) -> list[str]:
        raise NotImplementedError

    def sweep(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
        """The eval table (``knob``, ``points``, ``full``, ...) from ``evaluate_batch`` outputs."""
        raise NotImplementedError

    def summarise(self, table: dict[str, Any], val_table: dict[str, Any]) -> dict[str, Any]:
        """The operating points worth reporting: chosen on the validation table, never on the
        test table they are then read off (a best-on-test pick would be an oracle's)."""
        raise NotImplementedError

    def calibrate(self, val_table: dict[str, Any]) -> dict[str, Any]:
        """Default knob values chosen on a validation table."""
        raise NotImplementedError

    def explained_forward(self, trace: Trace, *, static: bool = False) -> Explained:
        """What attribution explains: a batched, differentiable function computing what
        ``trace``'s run computed (its exit, its blocks, its masks, its tokens), or with
        ``static`` the static network; and a tap of its own on the map Grad-CAM weighs."""
        raise NotImplementedError

    def curves(self, table: dict[str, Any]) -> tuple[Curve, ...]:
        """The accuracy-compute curves of this model's eval table. By default the one curve
        of the table's ``knob``, every other knob free."""
        return (Curve("", table["knob"], {}, table["points"]),)

    def curve_of(self, table: dict[str, Any], knobs: dict[str, Any]) -> Curve | None:
        """The curve that was measured with ``knobs``' other settings, if any."""
        return next((c for c in self.curves(table) if c.matches(knobs)), None)

    def measured_point(self, table: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any] | None:
        """The eval-table point measured at ``knobs`` (within half a slider step of the swept
        knob), or None: the nearest point may be another setting (merging is swept at even
        counts only)."""
        curve = self.curve_of(table, knobs)
        if curve is None:
            return None
        step = next(k.step for k in self.knobs if k.key == curve.knob)
        return curve.measured_at(knobs, tolerance=step / 2)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The loss of one batch, and what to log: detached scalar tensors, read only when an
        epoch's line is printed (reading each step would wait for a GPU every step)."""
        raise NotImplementedError

    def init_from(self, path: Path) -> dict[str, list[str]]:
        """Weights to start training from (``models.train --init``). By default this model's
        own file, every tensor; a model may also accept another's backbone. Returns the
        modules left freshly initialised under ``new``."""
        self.load_state_dict(load_file(str(path)))
        return {"new": []}

    def load_weights(self, path: Path | None = None) -> DynamicModel:
        """Load safetensors weights (no pickle): the committed file unless ``path``."""
        self.load_state_dict(load_file(str(path or self.card.weights)))
        return self.eval()


_REGISTRY: dict[str, type[DynamicModel]] = {}


def register(cls: type[DynamicModel]) -> type[DynamicModel]:
    """Class decorator: make a model available by name everywhere (sidebar, tests, CLI)."""
    if cls.category not in CATEGORIES:
        raise ValueError(f"{cls.__name__}.category must be one of {CATEGORIES}")
    if cls.name in _REGISTRY:
        raise ValueError(f"model {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def model_class(name: str) -> type[DynamicModel]:
    """The registered class of ``name``; KeyError listing the available ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {available()}") from None


def get(name: str, *, pretrained: bool = True) -> DynamicModel:
    """A fresh model in eval mode, with the committed weights when ``pretrained``."""
    model = model_class(name)()
    return model.load_weights() if pretrained else model.eval()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` and return its result and wall time in milliseconds."""
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3
