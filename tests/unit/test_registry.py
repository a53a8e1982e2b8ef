"""The registry and ``python -m models --list``."""

import json

import pytest

import models
from models.__main__ import main as list_main
from models.core import Card, DynamicModel, register


def test_every_model_is_listed_with_its_contract_fields(capsys):
    list_main(["--list"])
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed] == models.available()
    for entry in listed:
        assert entry["category"] in ("output", "graph", "input")
        assert entry["full_mflops"] > 0
        assert {"key", "lo", "hi", "step", "default", "instant"} <= set(entry["knobs"][0])
        assert "test_accuracy" in entry and "title" in entry


def test_register_refuses_duplicates_and_unknown_categories():
    existing = models.model_class(models.available()[0])
    with pytest.raises(ValueError):
        register(type("Dup", (DynamicModel,), {"name": existing.name, "category": "output"}))
    with pytest.raises(ValueError):
        register(type("Odd", (DynamicModel,), {"name": "odd", "category": "sideways"}))
    with pytest.raises(KeyError):
        models.get("no_such_model")


@pytest.mark.parametrize("name", models.available())
def test_each_page_says_how_its_weights_were_made_from_the_card(name):
    card = models.model_class(name)().card
    run = card.meta["training"]
    line = card.provenance()
    assert f"{run['epochs']} epochs on {run['device']}" in line and f"{100 * card.meta['test_accuracy']:.2f} %" in line
    assert f"Data: {run['data']}." in line
    runs, start = card.lineage()
    assert ("from scratch" in line) is (start is None)
    assert runs[-1] is run and (len(runs) == 1) is (card.meta["initialised_from"] is None)
    if len(runs) > 1:  # each run's epochs, in order
        epochs = [str(r["epochs"]) for r in runs]
        middle = f"{', '.join(epochs[1:-1])} and " if len(runs) > 2 else ""
        assert f"in {len(runs)} runs, each from the weights of the one before: {epochs[0]} epochs " in line
        assert f", then {middle}{epochs[-1]}; the last run: " in line


def test_a_card_without_a_training_run_says_so():
    card = Card("m", "M", "output", (), (), 32, (0, 0, 0), (1, 1, 1), {})
    assert "records no training run" in card.provenance()
    card.meta.update(training={"data": "D", "epochs": 3, "device": "cpu", "seconds": 9},
                     initialised_from={"weights": "w.safetensors"})  # fmt: skip
    assert card.provenance().startswith("These weights were trained starting from `w.safetensors` for 3 epochs on cpu")
    first = {"data": "D", "epochs": 5, "device": "cpu", "seconds": 9}
    second = {"data": "D", "epochs": 4, "device": "cpu", "seconds": 9}
    card.meta.update(initialised_from={"weights": "w.safetensors", "training": second,
                                       "initialised_from": {"weights": "v.safetensors", "training": first,
                                                            "initialised_from": None}})  # fmt: skip
    assert card.lineage() == ([first, second, card.meta["training"]], None)
    assert card.provenance().startswith(
        "These weights were trained in 3 runs, each from the weights of the one before: 5 epochs from scratch, "
        "then 4 and 3; the last run: 3 epochs on cpu in 9 s"
    )
    del card.meta["initialised_from"]["initialised_from"]["initialised_from"]  # a card that does not say
    assert card.lineage()[1] == {"weights": "earlier weights"}
    assert "5 epochs starting from `earlier weights`, then 4 and 3" in card.provenance()
