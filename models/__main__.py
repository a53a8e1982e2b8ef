"""``python -m models --list``: every registered model as JSON (name, title, category, knobs,
full MFLOPs, test accuracy from its card)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import models


def describe(name: str) -> dict:
    """One model's entry in ``--list``."""
    model = models.model_class(name)()
    card = model.card
    fields = ("key", "lo", "hi", "step", "instant", "options")
    # the default is the card's calibrated operating point when there is one, as in the app
    knobs = [{**{k: v for k, v in asdict(knob).items() if k in fields}, "default": model.default_knob(knob)}
             for knob in model.knobs]  # fmt: skip
    return {
        "name": name,
        "title": model.title,
        "category": model.category,
        "knobs": knobs,
        "full_mflops": model.full_flops / 1e6,
        "test_accuracy": card.meta.get("test_accuracy"),
        "weights": card.weights.exists(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--list", action="store_true", help="print the registered models as JSON")
    args = p.parse_args(argv)
    if not args.list:
        p.print_help()
        return
    print(json.dumps([describe(name) for name in models.available()], indent=2))


if __name__ == "__main__":
    main()
