"""Exit criteria, the exit rule, and cost arithmetic of the early-exit model (no weights)."""

import math

import numpy as np
import pytest
import torch

import models
from models.early_exit import STATIC_THRESHOLD, confidence, first_exit, redecide


def test_confidence_criteria_on_known_distributions():
    uniform = torch.full((10,), 0.1)
    onehot = torch.zeros(10)
    onehot[3] = 1.0
    assert confidence(uniform, "max_prob").item() == pytest.approx(0.1)
    assert confidence(uniform, "entropy").item() == pytest.approx(0.0, abs=1e-6)
    assert confidence(uniform, "margin").item() == pytest.approx(0.0)
    for criterion in ("max_prob", "entropy", "margin"):
        assert confidence(onehot, criterion).item() == pytest.approx(1.0)
    two = torch.tensor([0.5, 0.5] + [0.0] * 8)
    assert confidence(two, "entropy").item() == pytest.approx(1 - math.log(2) / math.log(10))


def test_unknown_criterion_is_refused():
    with pytest.raises(ValueError):
        confidence(torch.ones(10) / 10, "vibes")


def test_first_exit_picks_the_first_confident_exit_or_the_last():
    scores = torch.tensor([[0.2, 0.8, 0.95], [0.1, 0.2, 0.3], [0.99, 0.1, 0.1]])
    assert first_exit(scores, 0.9).tolist() == [2, 2, 0]
    assert first_exit(scores, 0.5).tolist() == [1, 2, 0]
    assert first_exit(scores, 0.0).tolist() == [0, 0, 0]


def test_static_threshold_never_exits_early_even_on_saturated_softmax():
    scores = torch.tensor([[1.0, 1.0, 1.0]])
    assert first_exit(scores, STATIC_THRESHOLD).tolist() == [2]


@pytest.fixture(scope="module")
def model():
    return models.get("early_exit", pretrained=False)


def test_cost_arithmetic(model):
    k_last = model.num_exits - 1
    assert model.cost_to_exit(k_last, dynamic=False) == model.full_flops
    assert model.cost_to_exit(0) == model.stage_flops[0] + model.exit_flops[0]
    dynamic = [model.cost_to_exit(k) for k in range(model.num_exits)]
    assert dynamic == sorted(dynamic)
    assert model.cost_to_exit(k_last) == model.full_flops + sum(model.exit_flops[:-1])


def test_redecide_needs_an_all_exits_record(model):
    trace = model.trace(torch.zeros(1, 3, 32, 32), threshold=0.5)
    with pytest.raises(ValueError):
        redecide(trace, threshold=0.5, criterion="max_prob")


def test_redecide_units_follow_the_decision(model):
    record = model.trace_all(torch.randn(1, 3, 32, 32))
    for threshold in (0.0, 0.5, STATIC_THRESHOLD):
        trace = redecide(record, threshold=threshold, criterion="max_prob")
        fired = trace.extras["fired_exit"]
        ran = [u.executed for u in trace.units if u.kind == "block"]
        assert ran == [k <= fired for k in range(model.num_exits)]
        assert sum(u.flops for u in trace.units) == trace.flops
        np.testing.assert_allclose(trace.probs, record.extras["exit_probs"][fired])
    assert redecide(record, threshold=0.0, criterion="max_prob").extras["fired_exit"] == 0


def test_knobs_are_validated(model):
    with pytest.raises(ValueError):
        model.trace(torch.zeros(1, 3, 32, 32), threshold=1.5)
    with pytest.raises(ValueError):
        model.trace(torch.zeros(1, 3, 32, 32), criterion="nope")
    with pytest.raises(ValueError):
        model.trace(torch.zeros(1, 3, 32, 32), temperature=2)


def test_the_confidence_chart_draws_the_threshold_line_with_its_value():
    from components.figures import make_exit_confidence

    model = models.get("early_exit")
    trace = model.redecide(model.trace_all(torch.zeros(1, 3, 32, 32)), threshold=0.7)
    fig = make_exit_confidence(trace, 0.7, model.card.classes, "max softmax probability")
    (line,) = fig.layout.shapes
    assert (line.y0, line.y1, line.x0, line.x1, line.xref) == (0.7, 0.7, 0, 1, "x domain")
    assert [a.text for a in fig.layout.annotations] == ["threshold 0.70"]


def test_summary_points_are_chosen_on_validation_and_read_off_test():
    """The test table's own best point under the budget would be an oracle's choice."""
    from models.early_exit import summarise

    def table(acc_at: dict[float, float]) -> dict:
        points = [{"value": t, "accuracy": a, "mflops": m} for t, (a, m) in acc_at.items()]
        static = [{"exit": 0, "accuracy": 0.5, "mflops": 40.0}, {"exit": 1, "accuracy": 0.9, "mflops": 100.0}]
        return {"points": points, "full": {"accuracy": 0.9, "mflops": 100.0}, "static_exits": static}

    val = table({0.5: (0.80, 40.0), 0.6: (0.70, 45.0), 1.0: (0.9, 100.0)})
    test = table({0.5: (0.70, 40.0), 0.6: (0.85, 45.0), 1.0: (0.9, 100.0)})
    summary = summarise(test, val)
    assert summary["best_at_half_flops"]["threshold"] == 0.5 and summary["best_at_half_flops"]["accuracy"] == 0.70
    (gain,) = summary["dynamic_vs_static_exits"]
    assert gain["dynamic_threshold"] == 0.5 and gain["gain_points"] == pytest.approx(20.0)
    assert summary["best_at_half_flops_any_criterion"] is None  # no per-criterion tables


def test_with_the_criterion_chosen_too_both_are_chosen_on_validation():
    from models.early_exit import summarise

    def table(curves: dict[str, dict[float, tuple[float, float]]]) -> dict:
        criteria = {
            c: [{"value": t, "accuracy": a, "mflops": m} for t, (a, m) in pts.items()] for c, pts in curves.items()
        }
        return {"points": criteria["max_prob"], "criteria": criteria, "full": {"accuracy": 0.9, "mflops": 100.0},
                "static_exits": [{"exit": 0, "accuracy": 0.9, "mflops": 100.0}]}  # fmt: skip

    # on validation entropy 0.5 and margin 0.4 tie at 0.82 and the cheaper wins; margin 0.5 is
    # more accurate but over half the FLOPs; max_prob, the best on test, is not seen there
    val = table(
        {
            "max_prob": {0.5: (0.80, 50.0)},
            "entropy": {0.5: (0.82, 49.0)},
            "margin": {0.4: (0.82, 48.0), 0.5: (0.86, 51.0)},
        }
    )
    test = table(
        {
            "max_prob": {0.5: (0.88, 50.0)},
            "entropy": {0.5: (0.89, 50.0)},
            "margin": {0.4: (0.81, 47.0), 0.5: (0.85, 51.0)},
        }
    )
    best = summarise(test, val)["best_at_half_flops_any_criterion"]
    assert (best["criterion"], best["threshold"], best["accuracy"], best["mflops"]) == ("margin", 0.4, 0.81, 47.0)
    assert best["drop_points"] == pytest.approx(9.0) and best["fraction_of_full"] == pytest.approx(0.47)


def test_a_run_whose_last_exit_fired_is_explained_once():
    """The attribution panel adds the static network's row only when the run computed another
    function: a run whose last exit fired costs more than the static network (its earlier exits
    ran too) but computes the same function."""
    from app.attribution import rows_of

    model = models.get("early_exit")
    gen = torch.Generator().manual_seed(0)
    late = None
    for _ in range(20):  # noise images: rarely confident, so the last exit fires
        x = torch.randn(1, 3, 32, 32, generator=gen)
        trace = model.trace(x, criterion="max_prob", threshold=0.999)
        if trace.extras["fired_exit"] == model.num_exits - 1:
            late = trace
            break
    assert late is not None and late.flops > model.full_flops
    assert rows_of(late, model) == [False]
    assert rows_of(model.trace(x, threshold=0.0), model) == [False, True]  # exit 1: another function
    assert rows_of(model.trace(x, **model.static_knobs), model) == [False]
