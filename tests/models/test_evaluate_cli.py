"""``python -m models.evaluate --write`` on a few images, into a scratch copy of the assets: the
eval table, the validation table it chose the defaults on, and the card they update."""

from __future__ import annotations

import json
import shutil

import pytest

import models
from models import core, evaluate
from models.core import eval_table_path
from models.evaluate import sha256


@pytest.mark.dataset
def test_write_stores_the_validation_table_it_chose_on(cifar_path, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(core.WEIGHTS_DIR / f"early_exit{suffix}", weights)
    monkeypatch.setattr(core, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(core, "EVAL_DIR", tmp_path / "eval")
    load_split = evaluate.load_split
    monkeypatch.setattr(evaluate, "load_split", lambda split, *a, **k: load_split(split, *a, **k).head(60))
    model = models.model_class("early_exit")().load_weights()

    evaluate.write(model, str(cifar_path))

    table = json.loads(eval_table_path("early_exit").read_text())
    val = json.loads(eval_table_path("early_exit", "val").read_text())
    card = json.loads((weights / "early_exit.json").read_text())
    assert eval_table_path("early_exit", "val").parent == tmp_path / "eval"
    assert (table["split"], table["n"], val["split"], val["n"]) == ("test", 60, "val", 60)
    assert table["weights_sha256"] == val["weights_sha256"] == card["weights_sha256"] == sha256(model.card.weights)
    assert model.calibrate(val) == table["default_knobs"] == card["default_knobs"]
    assert model.summarise(table, val) == table["summary"] == card["evaluation"]["summary"]
    assert card["val_full_accuracy"] == val["full"]["accuracy"] and "the 60-image validation" in card["calibration"]


def test_eval_tables_exist_for_the_test_and_validation_splits_only():
    assert eval_table_path("m").name == "m.json" and eval_table_path("m", "val").name == "m.val.json"
    with pytest.raises(ValueError, match="test and val"):
        eval_table_path("m", "train")
