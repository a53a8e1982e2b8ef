"""``python -m models.train`` end to end on a few images: weights and a card that names the
whole recipe, including where the weights started from."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

import models
from models import train
from models.evaluate import sha256
from models.train import main, parse_args


@pytest.mark.dataset
def test_a_short_run_writes_weights_and_a_complete_card(cifar_path, tmp_path):
    init = models.model_class("early_exit")().card.weights
    main(["--model", "block_skip", "--data", str(cifar_path), "--epochs", "1", "--limit", "64",
          "--batch-size", "32", "--out", str(tmp_path), "--init", str(init), "--loss", "target_rate=0.6"])  # fmt: skip
    card = json.loads((tmp_path / "block_skip.json").read_text())
    assert card["training"]["loss"] == {"target_rate": 0.6, "rate_weight": 2.0, "all_on_share": 0.25}
    assert card["initialised_from"]["sha256"] == sha256(init)
    assert "gates.0" in card["new_modules_at_init"] and "stem" not in card["new_modules_at_init"]
    assert set(card["val_accuracy"]) == {"all_blocks", "threshold_0.5"}
    assert card["training"]["bf16"] == train.bf16_native()
    fresh = models.model_class("block_skip")()
    assert set(load_file(str(tmp_path / "block_skip.safetensors"))) == set(fresh.state_dict())


def test_a_limited_run_may_not_replace_the_shipped_weights():
    with pytest.raises(SystemExit):
        main(["--model", "block_skip", "--epochs", "1", "--limit", "10"])


@pytest.mark.parametrize(
    ("native", "flag", "bf16"), [(True, [], True), (True, ["--no-bf16"], False), (False, [], False)]
)
def test_bf16_autocast_only_where_the_cpu_has_native_kernels(monkeypatch, tmp_path, native, flag, bf16):
    monkeypatch.setattr(train, "bf16_native", lambda: native)
    assert parse_args(["--model", "early_exit", "--out", str(tmp_path), *flag]).bf16 is bf16
