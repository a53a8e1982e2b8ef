"""The README's retraining commands are the ones the shipped cards were trained with."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from models.core import WEIGHTS_DIR
from tests.support import ROOT


def recipe(command: str) -> list[str]:
    """A ``models.train`` command without where the data is read from and the weights written."""
    words = shlex.split(command)
    start = words.index("models.train")
    kept, skip = [], False
    for word in words[start + 1 :]:
        if skip:
            skip = False
        elif word in ("--data", "--out"):
            skip = True
        else:
            kept.append(word)
    return kept


def readme_train_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = re.findall(r"^python -m models\.train .*$", text, flags=re.M)
    return [recipe(line.split("#")[0]) for line in lines]


@pytest.mark.parametrize("card", sorted(WEIGHTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_the_readme_gives_the_command_each_shipped_model_was_trained_with(card):
    command = json.loads(card.read_text())["training"]["command"]
    assert recipe(command) in readme_train_commands(), command


@pytest.mark.parametrize("card", sorted(WEIGHTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_the_readme_reports_each_shipped_models_test_accuracy(card):
    """Retrained weights must come with the README's numbers: the static network's top-1 as
    the card gives it (the "Measured so far" tables)."""
    accuracy = json.loads(card.read_text())["test_accuracy"]
    assert f"{100 * accuracy:.2f} % top-1" in (ROOT / "README.md").read_text(), card.stem


def test_make_train_gpu_runs_the_shipped_cards_recipes():
    """`make train-gpu` is how the shipped weights were made: its commands are the cards'."""
    import subprocess

    dry = subprocess.run(["make", "-n", "train-gpu", "DATA=PATH"], cwd=ROOT, capture_output=True, text=True, check=True)
    text = dry.stdout.replace("\\\n", " ")
    made = [recipe(part.split(">")[0]) for part in text.split("&") if "models.train" in part]
    shipped = [
        recipe(json.loads(card.read_text())["training"]["command"]) for card in sorted(WEIGHTS_DIR.glob("*.json"))
    ]
    assert sorted(made) == sorted(shipped)
