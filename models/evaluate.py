"""Measure a registered model on a labelled split, sweeping its knobs.

    python -m models.evaluate --model NAME [--data PATH] [--limit N] [--split test] [--write]

Prints the eval table as JSON on stdout: ``{"model", "knob", "points": [{"value",
"accuracy", "mflops"}, ...], "full": {"accuracy", "mflops"}, ...}``; accuracy in [0, 1],
mflops the mean executed MFLOPs per image (one multiply-add = 2 FLOPs).

``--write`` regenerates everything the app shows: it calibrates the default knobs on the
validation split, measures the test split, writes ``assets/eval/<model>.json`` and updates
the model card (test accuracy, FLOPs, default knobs, weights sha256). The validation table it
chose them on goes to ``assets/eval/<model>.val.json``, from which the choices can be derived again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

import models
from models.core import DynamicModel, eval_table_path
from models.data import DOWNLOAD_HELP, SPLITS, Split, load_split, resolve_source, to_tensor

SUBSET = 500  # test images the model-contract tests re-evaluate against the card


@torch.inference_mode()
def outputs_on(model: DynamicModel, split: Split, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """``evaluate_batch`` over a split, concatenated."""
    chunks: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(split), batch_size):
        x = to_tensor(split.images[i : i + batch_size], model.mean, model.std)
        chunks.append(model.evaluate_batch(x))
    return {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}


def evaluate(model: DynamicModel, split: Split) -> dict[str, Any]:
    """The model's eval table on one split (its ``sweep`` over the batched outputs)."""
    outputs = outputs_on(model, split)
    table = model.sweep(outputs, torch.from_numpy(split.labels))
    return {"model": model.name, "n": len(split), **table}


def sha256(path: Path) -> str:
    """Hex digest of a file (the card and eval table name the weights they describe)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compact_points(table: dict[str, Any]) -> list[dict[str, float]]:
    """Just value, accuracy and mean MFLOPs of each point (what the contract test re-checks)."""
    return [{k: p[k] for k in ("value", "accuracy", "mflops")} for p in table["points"]]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def write(model: DynamicModel, data: str | None, *, download: bool = False) -> dict[str, Any]:
    """Calibrate on val, evaluate on test, write the eval table and update the card."""
    val_table = {**evaluate(model, load_split("val", data, download=download)), "split": "val"}
    defaults = model.calibrate(val_table)
    test = load_split("test", data, download=download)
    table = {**evaluate(model, test), "split": "test", "default_knobs": defaults}
    table["summary"] = model.summarise(table, val_table)
    subset = evaluate(model, test.head(SUBSET))
    table["subset_check"] = {"n": subset["n"], "full": subset["full"], "points": compact_points(subset)}
    weights_sha256 = sha256(model.card.weights)  # 8 MB read once: both tables and the card name it
    table["weights_sha256"] = val_table["weights_sha256"] = weights_sha256
    for split, content in (("test", table), ("val", val_table)):
        path = eval_table_path(model.name, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, separators=(",", ":")) + "\n")

    card_path = model.card.card_path
    card = json.loads(card_path.read_text()) if card_path.exists() else {"name": model.name}
    source = resolve_source(data)
    card.update(
        {
            "test_accuracy": table["full"]["accuracy"],
            "full_mflops": table["full"]["mflops"],
            "default_knobs": defaults,
            "calibration": f"default knobs chosen on the {val_table['n']}-image "
            "validation hold-out of train/: the cheapest setting within 1 point of the full network",
            "val_full_accuracy": val_table["full"]["accuracy"],
            "evaluation": {
                "command": f"python -m models.evaluate --model {model.name} --write",
                "data": f"CIFAR-10 test/ ({source.name if source else 'torchvision'}), {table['n']} images",
                "summary": table["summary"],
            },
            "weights_sha256": weights_sha256,
        }
    )
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=models.available())
    p.add_argument("--data", help="CIFAR-10 zip or folder (default: $DYNN_CIFAR10)")
    p.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--limit", type=positive_int, help="evaluate the first N (class-balanced) images")
    p.add_argument("--weights", type=Path, help="weights file (default: the committed one)")
    p.add_argument("--write", action="store_true", help="calibrate, evaluate test, write assets")
    args = p.parse_args(argv)
    if args.write and (args.weights or args.limit or args.split != "test"):
        p.error("--write measures the committed weights on the whole test split: drop --weights/--limit/--split")
    model = models.model_class(args.model)().load_weights(args.weights)
    if args.write:
        table = write(model, args.data, download=args.download)
    else:
        table = evaluate(model, load_split(args.split, args.data, download=args.download).head(args.limit))
        table["split"] = args.split
    print(json.dumps(table))


if __name__ == "__main__":
    main()
