"""The README's retraining commands are the ones the shipped cards were trained with."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from models.core import WEIGHTS_DIR, Card
from tests.support import ROOT


def recipe(command: str) -> list[tuple[str, ...]]:
    """A ``models.train`` command without where the data is read from and the weights written:
    its options, each with its values, in a fixed order (argparse reads them in any). Starting
    weights read from an absolute path (a scratch folder on the GPU machine) stand for the
    shipped file of that name, the one the command before them in the lineage wrote (the
    lineage identifies it by hash); a relative path is compared as it is."""
    words = shlex.split(command)
    options: list[list[str]] = []
    for word in words[words.index("models.train") + 1 :]:
        if word.startswith("--"):
            options.append([word])
        else:
            options[-1].append(word)
    options = [
        [o[0], f"assets/weights/{Path(o[1]).name}"]
        if o[0] in ("--init", "--init-card") and Path(o[1]).is_absolute()
        else o
        for o in options
    ]
    return sorted(tuple(o) for o in options if o[0] not in ("--data", "--out"))


def readme_train_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = re.findall(r"^python -m models\.train .*$", text, flags=re.M)
    return [recipe(line.split("#")[0]) for line in lines]


def lineage(card: Path) -> list[str]:
    """A shipped card's training commands, first run first (``Card.lineage``: the runs its
    weights started from, nested under ``initialised_from``, then its own)."""
    runs, _ = Card(card.stem, "", "", (), (), 32, (0, 0, 0), (1, 1, 1), json.loads(card.read_text())).lineage()
    return [run["command"] for run in runs]


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


def make_recipes(target: str) -> list[list[tuple[str, ...]]]:
    """The shipped recipes of a Makefile target: its ``models.train`` commands that write to the
    shipped weights (no ``--out``; variants tried beside them write to checkpoints/)."""
    import subprocess

    dry = subprocess.run(["make", "-n", target, "DATA=PATH"], cwd=ROOT, capture_output=True, text=True, check=True)
    text = dry.stdout.replace("\\\n", " ")
    parts = [part.split(">")[0] for part in text.split("&") if "models.train" in part]
    return sorted(recipe(part) for part in parts if "--out" not in shlex.split(part))


# the GPU runs the shipped weights went through, first run first; a model may skip one
GPU_RUNS = (
    "train-gpu", "finetune-gpu", "refine-gpu", "refine2-gpu", "dense1-gpu", "dense2-gpu", "prune1-gpu", "prune2-gpu",
)  # fmt: skip


def test_the_make_gpu_targets_run_the_shipped_cards_recipes_run_by_run():
    """The shipped weights were made by `make train-gpu` (from scratch), then `make finetune-gpu`
    (from those weights), then, for some models, some of the later targets: each card's lineage
    is its model's commands in those targets, in their order, and no target ships a command
    that is in no card."""
    runs = {card.stem: [recipe(command) for command in lineage(card)] for card in sorted(WEIGHTS_DIR.glob("*.json"))}
    made: dict[str, list] = {name: [] for name in runs}
    targets: dict[str, list[str]] = {name: [] for name in runs}
    for target in GPU_RUNS:
        for command in make_recipes(target):
            model = dict((o[0], o[-1]) for o in command)["--model"]
            made[model].append(command)
            targets[model].append(target)
    assert made == runs
    assert all(names[:2] == ["train-gpu", "finetune-gpu"] for names in targets.values()), targets
