"""The registry and ``python -m models --list``."""

import json

import pytest

import models
from models.__main__ import main as list_main
from models.core import DynamicModel, register


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
