"""The README's retraining commands are the ones the shipped cards were trained with."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

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


def lineage(card: Path) -> list[str]:
    """A shipped card's training commands, first run first: the run its weights started from
    (``initialised_from``, whose training the card keeps), then its own."""
    data = json.loads(card.read_text())
    start = data["initialised_from"] and data["initialised_from"]["training"]
    return [start["command"]] * bool(start) + [data["training"]["command"]]


@pytest.mark.parametrize("card", sorted(WEIGHTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_the_readme_gives_the_commands_each_shipped_model_was_trained_with(card):
    for command in lineage(card):
        assert recipe(command) in readme_train_commands(), command


@pytest.mark.parametrize("card", sorted(WEIGHTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_the_readme_reports_each_shipped_models_test_accuracy(card):
    """Retrained weights must come with the README's numbers: the static network's top-1 as
    the card gives it (the "Measured so far" tables)."""
    accuracy = json.loads(card.read_text())["test_accuracy"]
    assert f"{100 * accuracy:.2f} % top-1" in (ROOT / "README.md").read_text(), card.stem


def make_recipes(target: str) -> list[list[str]]:
    import subprocess

    dry = subprocess.run(["make", "-n", target, "DATA=PATH"], cwd=ROOT, capture_output=True, text=True, check=True)
    text = dry.stdout.replace("\\\n", " ")
    return sorted(recipe(part.split(">")[0]) for part in text.split("&") if "models.train" in part)


def test_make_train_gpu_and_finetune_gpu_run_the_shipped_cards_recipes():
    """The shipped weights were made by `make train-gpu` (from scratch), then `make finetune-gpu`
    (from those weights): their commands are the cards' lineage, run by run."""
    runs = [lineage(card) for card in sorted(WEIGHTS_DIR.glob("*.json"))]
    assert all(len(commands) == 2 for commands in runs)
    assert make_recipes("train-gpu") == sorted(recipe(commands[0]) for commands in runs)
    assert make_recipes("finetune-gpu") == sorted(recipe(commands[1]) for commands in runs)
