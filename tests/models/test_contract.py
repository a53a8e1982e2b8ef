"""Contracts every registered model keeps, parametrised over the registry (timm-style): a new
model gets every check with no edit here."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch.nn.modules import module as nn_module

import models
from models.attribution import attribute
from models.core import DynamicModel, eval_table_path
from models.cost import count_flops
from models.data import to_tensor
from models.evaluate import SUBSET, compact_points, evaluate, sha256


@pytest.fixture(scope="module", params=models.available())
def model(request) -> DynamicModel:
    return models.get(request.param)


def knob_settings(model: DynamicModel, n: int = 11) -> list[dict]:
    """The cost knob over its range, every option of the other knobs; then each other numeric
    knob at the ends of its range (the transformer's k = 1 and E, a capacity that drops expert
    choices), with every option and the cost knob at its ends."""
    cost = next(k for k in model.knobs if k.key == model.cost_knob)
    grids = [
        [(k.key, v) for v in (k.options or [k.default])] for k in model.knobs if k.key != model.cost_knob
    ]  # fmt: skip
    combos: list[dict] = [{}]
    for grid in grids:
        combos = [{**c, key: v} for c in combos for key, v in grid]
    values = np.round(np.linspace(cost.lo, cost.hi, n), 6)
    ends = [(k.key, end) for k in model.knobs if k.key != model.cost_knob and not k.options
            for end in (k.lo, k.hi) if end != k.default]  # fmt: skip
    return [{**c, cost.key: float(v)} for c in combos for v in values] + [
        {**c, key: end, cost.key: float(v)} for key, end in ends for c in combos for v in (cost.lo, cost.hi)
    ]


def sample_inputs(model: DynamicModel, n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 3, model.input_size, model.input_size, generator=gen) for _ in range(n)]


def hooks_left(model: DynamicModel) -> int:
    per_module = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return per_module + len(nn_module._global_forward_hooks) + len(nn_module._global_forward_pre_hooks)


def ran_modules(model: DynamicModel, fn):
    """``fn()``'s result and the names of the unit modules that really executed meanwhile."""
    seen: set[str] = set()
    handles = [m.register_forward_hook(lambda *_, n=name: seen.add(n)) for name, m in model.unit_modules().items()]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return result, seen


def test_executed_flops_are_bounded(model):
    for x in sample_inputs(model):
        for knobs in knob_settings(model):
            trace = model.trace(x, **knobs)
            assert 0 < trace.flops <= model.max_flops
            assert trace.flops == sum(u.flops for u in trace.units)
            assert all(u.flops >= 0 for u in trace.units)
            assert trace.full_flops == model.full_flops


def test_trace_flops_equal_a_real_count_of_the_run(model):
    """The trace's FLOPs are what FlopCounterMode counts on the very forward pass that ran."""
    for x in sample_inputs(model, 2):
        for knobs in knob_settings(model, 6):
            trace, counted = count_flops(model.trace, x, **knobs)
            assert counted == trace.flops, knobs


def test_static_setting_gives_static_cost_and_prediction(model):
    for x in sample_inputs(model):
        trace = model.trace(x, **model.static_knobs)
        with torch.inference_mode():
            static = model(x).softmax(-1)[0].numpy()
        assert trace.flops == model.full_flops
        assert trace.prediction == int(static.argmax())
        np.testing.assert_allclose(trace.probs, static, atol=1e-5)


def test_what_a_model_calls_static_runs_the_static_network(model):
    """``runs_static`` (the app measures a run's latency against the static network's unless
    it is one) holds at the static setting, and only where a run costs and predicts exactly
    what the static network does."""
    assert model.runs_static(**model.static_knobs)
    verdicts = set()
    for x in sample_inputs(model, 2):
        static = model.trace(x, **model.static_knobs)
        for knobs in knob_settings(model, 6):
            verdicts.add(model.runs_static(**knobs))
            if model.runs_static(**knobs):
                trace = model.trace(x, **knobs)
                assert (trace.flops, trace.prediction) == (static.flops, static.prediction), knobs
    assert verdicts == {True, False}


def test_only_units_the_trace_says_ran_are_computed(model):
    for x in sample_inputs(model, 2):
        for knobs in knob_settings(model, 6):
            trace, ran = ran_modules(model, lambda knobs=knobs, x=x: model.trace(x, **knobs))
            assert ran == {u.name for u in trace.units if u.executed}


def test_no_hooks_left_behind(model):
    fresh = models.model_class(model.name)()  # construction counts FLOPs with FlopCounterMode
    assert hooks_left(fresh) == 0
    before = hooks_left(model)
    x = sample_inputs(model, 1)[0]
    count_flops(model.trace, x)
    model.trace(x)
    model.evaluate_batch(x.repeat(2, 1, 1, 1))
    if any(k.instant for k in model.knobs):
        model.trace_all(x)
    assert hooks_left(model) == before == 0


def test_trace_takes_one_image_of_the_input_size(model):
    """A batch or another size would run, but the trace's decisions and FLOPs describe one
    image at the card's size: refused rather than misreported."""
    size = model.input_size
    for shape in ((2, 3, size, size), (1, 3, 2 * size, 2 * size), (1, 1, size, size)):
        with pytest.raises(ValueError, match="expects a tensor shaped"):
            model.trace(torch.zeros(shape))


def test_whole_step_knobs_refuse_fractions(model):
    """A count knob (k, tokens merged) given 2.5 would run 2 and record 2.5."""
    for knob in model.knobs:
        if not knob.options and knob.step >= 1:
            with pytest.raises(ValueError, match="whole steps"):
                model.knob_values(**{knob.key: knob.lo + 0.5})
            assert model.knob_values(**{knob.key: knob.lo})[knob.key] == knob.lo


def test_trace_is_plain_data(model):
    trace = model.trace(sample_inputs(model, 1)[0])
    data = json.loads(trace.to_json())
    assert data["model"] == model.name and len(data["units"]) == len(trace.units)
    assert trace.probs.shape == (len(model.card.classes),)
    assert trace.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert trace.latency_ms is not None and trace.latency_ms > 0


def test_explained_forward_is_the_run_and_taps_only_itself(model):
    """Attribution explains what ran: the explained function predicts what the trace did, and
    Grad-CAM's tap is a module of its own, not a layer of the model every session shares."""
    for x in sample_inputs(model, 3):
        for knobs in (model.knob_values(), model.static_knobs):
            trace = model.trace(x, **knobs)
            explained = model.explained_forward(trace, static=knobs is model.static_knobs)
            with torch.no_grad():
                logits = explained.forward(x)
            assert logits.shape == (1, len(model.card.classes))
            assert int(logits.argmax()) == trace.prediction, knobs
            assert not any(explained.tap is m for m in model.modules())


def test_the_explained_function_says_when_it_is_the_static_networks(model):
    """``Explained.static`` (the attribution panel then shows no second, identical row) holds
    for the static network and for the run at the static setting."""
    x = sample_inputs(model, 1)[0]
    assert model.explained_forward(model.trace(x, **model.static_knobs)).static
    assert model.explained_forward(model.trace(x), static=True).static


def test_concurrent_attributions_on_one_shared_model(model):
    """Two sessions explaining one cached model while a third runs it, all at once: every
    Grad-CAM map equals the one computed alone. With the hook on a layer of the shared model,
    captum raised in 77 of 150 such calls."""
    xs = sample_inputs(model, 2)
    traces = [model.trace(x) for x in xs]
    alone = [attribute(model, x, t, "gradcam") for x, t in zip(xs, traces, strict=True)]

    def explain(i: int) -> list[np.ndarray]:
        return [attribute(model, xs[i], traces[i], "gradcam") for _ in range(15)]

    def run() -> None:
        for _ in range(30):
            model.trace(xs[0], **model.static_knobs)

    with ThreadPoolExecutor(3) as pool:
        maps = [pool.submit(explain, i) for i in (0, 1)]
        runner = pool.submit(run)
        runner.result()
        for i, future in enumerate(maps):
            for m in future.result():
                np.testing.assert_allclose(m, alone[i], atol=1e-5)
    assert hooks_left(model) == 0


# --- on the real test split ($DYNN_CIFAR10) -------------------------------------------------


@pytest.fixture(scope="module")
def test_batch(test_split, model):
    sub = test_split.head(200)
    return to_tensor(sub.images, model.mean, model.std), sub.labels


@pytest.mark.dataset
def test_real_path_and_instant_path_decide_alike(model, test_batch):
    if not any(k.instant for k in model.knobs):
        pytest.skip(f"{model.name} has no instant knobs")
    x, _ = test_batch
    settings = knob_settings(model, 11)
    for i in range(len(x)):
        xi = x[i : i + 1]
        record = model.trace_all(xi)
        for knobs in settings:
            real, instant = model.trace(xi, **knobs), model.redecide(record, **knobs)
            assert [u.decision for u in real.units] == [u.decision for u in instant.units], (i, knobs)
            assert [u.executed for u in real.units] == [u.executed for u in instant.units], (i, knobs)
            for a, b in zip(real.units, instant.units, strict=True):
                assert (a.score is None) == (b.score is None) and (
                    a.score is None or a.score == pytest.approx(b.score, abs=1e-5)
                )
            assert real.flops == instant.flops and real.prediction == instant.prediction


def test_the_test_sets_mean_cost_is_monotone_in_the_cost_knob(model):
    """What the pages' curves and Compare's budget matching rely on: over the 10,000 test
    images, moving the cost knob one way never raises the mean compute (the static network's
    setting aside: it computes no decisions, e.g. no early exits, and can cost less)."""
    table = json.loads(eval_table_path(model.name).read_text())
    curves = [c for c in model.curves(table) if c.knob == model.cost_knob]
    assert curves
    static = model.static_knobs[model.cost_knob]
    for curve in curves:
        points = sorted((p for p in curve.points if p["value"] != static), key=lambda p: p["value"])
        costs = [p["mflops"] for p in points]
        assert (np.diff(costs) * model.cost_direction >= 0).all(), (curve.label, costs)
        assert costs[0] != costs[-1], "the cost knob must change the cost"


@pytest.mark.dataset
def test_cost_follows_the_cost_knob_at_batch_size_1(model, test_batch):
    """The same at batch size 1 on 50 images, where decisions that feed later ones (a skipped
    block changes what the next gate sees) may reverse a step: at most one unit on one image
    per step, which the shipped gated network does on 2 of these 50 images."""
    x, _ = test_batch
    n = 50
    cost = next(k for k in model.knobs if k.key == model.cost_knob)
    values = [float(v) for v in np.linspace(cost.lo, cost.hi, 21) if v != model.static_knobs[cost.key]]
    by_value = {v: [model.trace(x[i : i + 1], **{cost.key: v}) for i in range(n)] for v in values}
    costs = [np.mean([t.flops for t in by_value[v]]) for v in sorted(by_value)]
    one_unit = max(u.full_flops for u in by_value[values[0]][0].units if u.kind != "layer") / n  # on one image
    steps = np.diff(costs) * model.cost_direction
    assert (steps >= -one_unit - 1e-6).all(), costs
    assert costs[0] * model.cost_direction < costs[-1] * model.cost_direction, "the cost knob must change the cost"


@pytest.mark.dataset
def test_shipped_weights_reproduce_their_card(model, test_split):
    card = model.card.meta
    table = json.loads(eval_table_path(model.name).read_text())
    assert card["weights_sha256"] == sha256(model.card.weights)
    assert card["test_accuracy"] == pytest.approx(table["full"]["accuracy"])
    assert table["weights_sha256"] == card["weights_sha256"]
    assert table["n"] == 10_000 and table["subset_check"]["n"] == SUBSET
    measured = evaluate(model, test_split.head(SUBSET))
    expected = table["subset_check"]
    assert measured["full"]["accuracy"] == pytest.approx(expected["full"]["accuracy"], abs=1.5 / SUBSET)
    # every operating point the page draws, re-measured (batched numerics may flip an image)
    for got, want in zip(compact_points(measured), expected["points"], strict=True):
        assert got["value"] == want["value"]
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=2.5 / SUBSET)
        assert got["mflops"] == pytest.approx(want["mflops"], rel=0.01)


def test_default_knobs_and_summary_follow_from_the_stored_validation_table(model):
    """What the card calls "chosen on validation": the stored validation table ``--write``
    calibrated on gives the table's default knobs and summary again (the validation table
    itself is not re-measured here; the weights test re-measures part of the test table)."""
    table = json.loads(eval_table_path(model.name).read_text())
    val = json.loads(eval_table_path(model.name, "val").read_text())
    assert val["split"] == "val" and table["split"] == "test"
    assert val["weights_sha256"] == table["weights_sha256"] == model.card.meta["weights_sha256"]
    assert f"the {val['n']}-image validation" in model.card.meta["calibration"]
    assert model.calibrate(val) == table["default_knobs"] == model.card.meta["default_knobs"]
    assert model.summarise(table, val) == table["summary"]
    assert val["full"]["accuracy"] == model.card.meta["val_full_accuracy"]


def test_every_eval_curve_names_valid_knobs_and_its_own_points(model):
    """What the Compare page's budget matching sets: each curve point as knobs the model takes,
    and those knobs found on that same curve."""
    table = json.loads(eval_table_path(model.name).read_text())
    defaults = model.knob_values()
    curves = model.curves(table)
    assert curves and model.curve_of(table, defaults) is not None
    for curve in curves:
        assert curve.points
        for point in curve.points:
            knobs = model.knob_values(**curve.knobs_at(point, defaults))
            assert model.curve_of(table, knobs) == curve and curve.nearest(knobs) == point
