"""Train a registered model on CIFAR-10 ``train/`` (minus the validation hold-out).

    python -m models.train --model early_exit --data PATH [--epochs 30]

Writes ``assets/weights/<model>.safetensors`` and the training part of the model card
``assets/weights/<model>.json``. Then ``python -m models.evaluate --model NAME --write``
calibrates the default knobs on the validation split and measures the test split.

A long schedule can run in pieces: ``--checkpoint DIR`` saves the whole training state (weights,
optimizer, step, random generators) after every epoch and resumes from it when the same command
runs again; ``--stop-after N`` ends this invocation after N epochs. The result is the same
weights as one uninterrupted run (a test checks), so a CPU-only machine can train over several
sessions. Weights and card are written only when the schedule is complete.

``--time-budget SECONDS`` trains as many epochs as fit in that wall time (at most ``--epochs``):
after every epoch from the second on, the plan shrinks to what the measured pace still fits, and
the learning-rate schedule follows the plan. The card records the epochs that ran. The shipped
weights were trained so, the four models side by side on one GPU (``make train-gpu``).

Recipe: SGD with Nesterov momentum (``--optimizer adamw`` for the transformer, as DeiT trains
ViTs), a one-cycle learning rate (linear warm-up, linear decay), random crop and flip (and
AutoAugment, Cutout, CutMix/MixUp when asked), bf16
autocast on CPUs with native bf16 kernels (about 2.3x faster than fp32 on AVX-512 cores); fp32
elsewhere, where oneDNN emulates bf16 and autocast is many times slower than fp32.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import models
from models.core import WEIGHTS_DIR
from models.data import (
    CLASSES,
    DOWNLOAD_HELP,
    Split,
    augment,
    auto_augment,
    cutout,
    load_split,
    mix,
    resolve_source,
    to_tensor,
)
from models.evaluate import sha256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=models.available())
    p.add_argument("--data", help="CIFAR-10 zip or folder (default: $DYNN_CIFAR10)")
    p.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="SGD with Nesterov momentum, or AdamW")
    p.add_argument("--warmup", type=float, default=0.15, help="fraction of steps warming up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cutout", type=int, default=0, metavar="PIXELS", help="Cutout square side after crop and flip (0: none)"
    )
    p.add_argument(
        "--autoaugment", action="store_true", help="AutoAugment's CIFAR-10 policy after crop and flip, before Cutout"
    )
    p.add_argument("--mix", action="store_true", help="CutMix or MixUp (one per batch, ratio ~ Beta(1, 1)), last")
    p.add_argument("--limit", type=int, help="train, and validate, on the first N images of each only (smoke tests)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--init",
        type=Path,
        help="start from these weights: continue a run, or another model's backbone (block_skip from early_exit's, "
        "pixel_mask from block_skip's)",
    )
    p.add_argument("--init-card", type=Path, help="the card of --init, kept in the new card as its lineage")
    p.add_argument(
        "--loss",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument of the model's training_loss (e.g. exit_weight=0.3)",
    )
    p.add_argument("--out", type=Path, help=f"output folder (default: {WEIGHTS_DIR}, the shipped weights)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 even where the CPU has native bf16 kernels")
    p.add_argument(
        "--device",
        default="cpu",
        help="where to train: cpu, or cuda (bf16 autocast where the GPU supports it; the data is moved to the "
        "GPU once, and augmentation runs there)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="folder for the training state: saved after every epoch, resumed from if present",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="train as many epochs as fit in SECONDS of wall time, data loading included (at most --epochs): "
        "after every epoch the plan shrinks to what the measured epochs say still fits, and the learning-rate "
        "schedule follows the plan (not with --checkpoint)",
    )
    p.add_argument(
        "--stop-after", type=int, metavar="N", help="end this invocation after N epochs (needs --checkpoint)"
    )
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        p.error("--epochs, --batch-size and --limit must be at least 1")
    try:  # before any data is read: a misspelt loss setting fails at once, not at the first step
        loss_keywords(models.model_class(args.model), args.loss)
    except ValueError as err:
        p.error(f"--loss: {err}")
    if args.limit and args.out is None:
        p.error("a --limit run must not replace the shipped weights: give --out")
    if args.stop_after is not None and (args.checkpoint is None or args.stop_after < 1):
        p.error("--stop-after needs --checkpoint (to resume from) and N >= 1")
    if args.time_budget is not None and (args.checkpoint or args.time_budget <= 0):
        p.error("--time-budget needs a positive number of seconds, and no --checkpoint (a resumed run has no one plan)")
    args.out = args.out or WEIGHTS_DIR
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU here")
    args.bf16 = not args.no_bf16 and bf16_native(args.device)
    if not args.no_bf16 and not args.bf16:
        print(f"this {args.device.type} has no native bf16 kernels: training in fp32", file=sys.stderr)
    return args


@torch.no_grad()
def exit_accuracy(model: models.DynamicModel, split: Split, batch_size: int = 1000) -> list[float]:
    """Top-1 accuracy of each of the K outputs of the model's ``monitor_batch`` (every exit, for
    the early-exit model) on a split, on the model's device; logged while training."""
    model.eval()
    device = next(model.parameters()).device
    correct = None
    for i in range(0, len(split), batch_size):
        x = to_tensor(split.images[i : i + batch_size], model.mean, model.std).to(device)
        y = torch.from_numpy(split.labels[i : i + batch_size]).to(device)
        probs = model.monitor_batch(x)  # (B, K, C)
        hits = (probs.argmax(-1) == y[:, None]).sum(0).cpu()
        correct = hits if correct is None else correct + hits
    return (correct.double() / len(split)).tolist()


def loss_settings(model: models.DynamicModel, overrides: list[str]) -> dict[str, float]:
    """Every keyword of the model's ``training_loss`` with the value this run used (defaults
    included), so the card names the whole loss."""
    params = inspect.signature(model.training_loss).parameters.values()
    used = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return used | parse_loss(overrides)


def parse_loss(items: list[str]) -> dict[str, float]:
    """``--loss KEY=VALUE`` items as keyword arguments of ``training_loss``. Raises ValueError."""
    pairs = [item.split("=", 1) for item in items]
    if bad := [item for item, pair in zip(items, pairs, strict=True) if len(pair) != 2]:
        raise ValueError(f"not KEY=VALUE: {', '.join(bad)}")
    return {k: float(v) for k, v in pairs}


def loss_keywords(model_class: type[models.DynamicModel], items: list[str]) -> dict[str, float]:
    """:func:`parse_loss`, checked against the keywords ``training_loss`` takes. Raises ValueError."""
    params = inspect.signature(model_class.training_loss).parameters.values()
    known = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    given = parse_loss(items)
    if unknown := sorted(given.keys() - known):
        raise ValueError(
            f"{model_class.name}'s training loss takes {', '.join(sorted(known))}, not {', '.join(unknown)}"
        )
    return given


def bf16_native(device: torch.device) -> bool:
    """Whether the device computes bf16 natively: a GPU that supports it (Ampere and newer), or
    a CPU where oneDNN has bf16 kernels (AVX-512 or newer). On an AVX2-only CPU oneDNN emulates
    them: one bf16 autocast training step of a small CIFAR network took 53 s there against
    3.9 s in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_name(device: torch.device) -> str:
    """The device as the card records it: ``cpu``, or ``cuda (the GPU's name)``."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def augmentation(args: argparse.Namespace) -> str:
    """The run's augmentation as the card names it, in the order it is applied."""
    steps = ["random crop (4-pixel reflect padding)", "flip"]
    steps += ["AutoAugment (CIFAR-10 policy)"] * args.autoaugment + [f"cutout {args.cutout}"] * bool(args.cutout)
    return ", ".join(steps + ["CutMix or MixUp"] * args.mix)


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """One-cycle: linear from peak/10 to peak over ``warmup`` of the steps, then to zero."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (0.1 + 0.9 * step / w)
    return peak * max(0.0, (total - step) / (total - w))


def epochs_that_fit(done: int, seconds_per_epoch: float, seconds_left: float, planned: int) -> int:
    """The plan after ``done`` epochs under a time budget: as many more epochs as the measured
    pace fits in the seconds left, never more than ``planned`` and never fewer than are done."""
    more = int(seconds_left // seconds_per_epoch) if seconds_per_epoch > 0 else planned
    return max(done, min(planned, done + max(0, more)))


# share of a --time-budget the epochs may fill: the rest is for the last validation and the writing
BUDGET_SHARE = 0.97


# what must match for a checkpoint to continue this run's schedule
SCHEDULE = ("model", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "warmup", "seed", "limit", "init",
            "loss", "bf16", "cutout", "autoaugment", "mix")  # fmt: skip
# options added to SCHEDULE later, at the value that means "not used"
ADDED_TO_SCHEDULE = {"cutout": 0, "autoaugment": False, "mix": False}
RESUME_ONLY = ("--checkpoint", "--stop-after")  # how a run was split, not what it trained: not in the card's command


def schedule_of(args: argparse.Namespace) -> dict:
    """What the run trains: the recipe's arguments and the data source's identity."""
    source = resolve_source(args.data)
    data = "torchvision's download" if source is None else source.name
    data += f", {source.stat().st_size} bytes" if source and source.is_file() else ""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k in SCHEDULE} | {"data": data}


def first_session(args: argparse.Namespace, model: models.DynamicModel) -> dict:
    """What the card reports about the start, read once when the run starts (a resumed run must
    not read a starting file that was replaced in between): the starting weights' hash and
    training, the whole loss, the torch version."""
    init_card = json.loads(args.init_card.read_text()) if args.init and args.init_card else {}
    start = args.init and {
        "weights": args.init.name,
        "sha256": sha256(args.init),
        "training": init_card.get("training"),
        "initialised_from": init_card.get("initialised_from"),  # the whole lineage, run by run
    }
    return {"initialised_from": start, "loss": loss_settings(model, args.loss), "torch": [str(torch.__version__)]}


def recorded_command(argv: list[str]) -> str:
    """The training command for the card, without the options that only split it into pieces."""
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in RESUME_ONLY:
            skip = True
        elif not word.startswith(tuple(f"{o}=" for o in RESUME_ONLY)):
            words.append(word)
    return "python -m models.train " + shlex.join(words)


def checkpoint_file(args: argparse.Namespace) -> Path:
    return args.checkpoint / f"{args.model}.pt"


def save_checkpoint(args: argparse.Namespace, state: dict) -> None:
    """The training state after an epoch, written atomically (a killed run leaves the last one)."""
    path = checkpoint_file(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(args: argparse.Namespace) -> dict | None:
    """The saved state of this very schedule, or None; SystemExit if the folder holds another."""
    path = checkpoint_file(args) if args.checkpoint else None
    if path is None or not path.exists():
        return None
    state = torch.load(path, weights_only=True, map_location=args.device)  # a CPU run may go on on a GPU
    asked = schedule_of(args)
    saved = ADDED_TO_SCHEDULE | state["schedule"]  # a checkpoint from before an option existed ran without it
    if saved != asked:
        diff = {k: (saved.get(k), v) for k, v in asked.items() if saved.get(k) != v}
        raise SystemExit(
            f"{path} is another run's checkpoint (saved vs asked: {diff}); delete it or pick another folder"
        )
    return state


def train(args: argparse.Namespace) -> dict:
    began = time.time()  # a --time-budget counts from here, data loading included
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = models.model_class(args.model)()
    resumed = load_checkpoint(args)
    init = model.init_from(args.init) if args.init and resumed is None else None
    record = first_session(args, model) if resumed is None else resumed["record"]
    train_split = load_split("train", args.data, download=args.download).head(args.limit)
    val_split = load_split("val", args.data, download=args.download).head(args.limit)
    model = model.to(args.device, memory_format=torch.channels_last)  # ~15% faster with bf16 on CPU
    x_all = to_tensor(train_split.images, model.mean, model.std).to(args.device)
    y_all = torch.from_numpy(train_split.labels).to(args.device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=args.lr)
    else:
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = max(1, len(train_split) // args.batch_size)
    total = steps_per_epoch * args.epochs
    loss_kwargs = parse_loss(args.loss)
    step, first, spent, val, sessions = 0, 0, 0.0, None, []
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        gen.set_state(resumed["generator"].cpu())
        torch.set_rng_state(resumed["torch_rng"].cpu())
        if args.device.type == "cuda" and resumed.get("cuda_rng") is not None:  # gate, router and mask noise
            torch.cuda.set_rng_state_all([s.cpu() for s in resumed["cuda_rng"]])
        step, first, spent, val = resumed["step"], resumed["epoch"], resumed["seconds"], resumed["val"]
        init, sessions = resumed["init"], resumed["sessions"]
        print(json.dumps({"resumed": str(checkpoint_file(args)), "epoch": first, "of": args.epochs}), flush=True)
    sessions = [*sessions, first]  # the epoch each invocation started at
    record["torch"] = list(dict.fromkeys([*record["torch"], str(torch.__version__)]))
    record["device"] = list(dict.fromkeys([*record.get("device", []), device_name(args.device)]))  # every session's
    last = args.epochs if args.stop_after is None else min(args.epochs, first + args.stop_after)
    planned, epoch = args.epochs, first
    start = time.time()
    while epoch < min(planned, last):
        model.train()
        order = torch.randperm(len(train_split), generator=gen).to(args.device)
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x, y = augment(x_all[idx], gen), y_all[idx]
            if args.autoaugment:
                x = auto_augment(x, model.mean, model.std)
            x = cutout(x, args.cutout, gen)
            if args.mix:
                x, y = mix(x, y, len(CLASSES))
            x = x.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, args.lr, args.warmup)
            with torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss, logs = model.training_loss(x, y, **loss_kwargs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        epoch += 1
        if args.time_budget:  # before the validation, so that a plan ending here validates
            # the pace leaves out this session's first epoch (it starts the GPU's kernels and
            # caches), which plans only a stop: the budget holds no second epoch at its pace
            if epoch == first + 1:
                warm = time.time()
            pace = (time.time() - warm) / (epoch - first - 1) if epoch > first + 1 else time.time() - start
            fit = epochs_that_fit(epoch, pace, args.time_budget * BUDGET_SHARE - (time.time() - began), planned)
            if fit != planned and (epoch > first + 1 or fit == epoch):
                planned, total = fit, steps_per_epoch * fit
                print(json.dumps({"plan": planned, "seconds_per_epoch": round(pace, 2)}), flush=True)
        val = exit_accuracy(model, val_split) if epoch % 5 == 0 or epoch == planned else None
        print(
            json.dumps(
                {
                    "epoch": epoch,
                    "seconds": round(spent + time.time() - start),
                    **{k: round(float(v), 4) for k, v in logs.items()},  # the epoch's last step
                    "val": [round(a, 4) for a in val] if val else None,
                }
            ),
            flush=True,
        )
        # not after the last epoch: main() writes the weights, then removes the checkpoint, so a
        # run killed in between redoes the last epoch, and a finished run leaves none behind
        if args.checkpoint and epoch < args.epochs:
            save_checkpoint(args, {
                "schedule": schedule_of(args), "epoch": epoch, "step": step, "seconds": spent + time.time() - start,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "val": val, "init": init, "sessions": sessions, "record": record,
                "cuda_rng": torch.cuda.get_rng_state_all() if args.device.type == "cuda" else None,
            })  # fmt: skip
    return {
        "model": model, "val": val, "seconds": spent + time.time() - start, "n_train": len(train_split),
        "n_val": len(val_split), "init": init,
        "done": epoch == planned, "epochs_done": epoch, "sessions": sessions, "record": record,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = train(args)
    if not result["done"]:
        print(json.dumps({"stopped_at_epoch": result["epochs_done"], "of": args.epochs,
                          "resume": "run the same command again", "checkpoint": str(checkpoint_file(args))}))  # fmt: skip
        return
    model, record = result["model"], result["record"]
    weights = args.out / f"{args.model}.safetensors"
    source = resolve_source(args.data)
    card = {
        "name": args.model,
        "title": model.title,
        "category": model.category,
        "papers": list(model.papers),
        "training": {
            "command": recorded_command(sys.argv[1:] if argv is None else argv),
            "data": f"CIFAR-10 train/ ({source.name if source else 'torchvision'}), "
            f"{result['n_train']} images; validation hold-out of train/ excluded ({result['n_val']} of its images "
            "validated on)",
            "epochs": result["epochs_done"],
            **({"time_budget_s": args.time_budget, "epochs_at_most": args.epochs} if args.time_budget else {}),
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "peak_lr": args.lr,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
            "augmentation": augmentation(args),
            "loss": record["loss"],
            "bf16": args.bf16,
            "device": ", ".join(record["device"]),
            "seconds": round(result["seconds"]),
            "resumed_at_epochs": result["sessions"][1:],
            "torch": ", ".join(record["torch"]),
        },
        "val_accuracy": dict(zip(model.monitor_names, result["val"], strict=True)),
        "initialised_from": record["initialised_from"],
        "new_modules_at_init": result["init"] and result["init"]["new"],
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "input_size": model.input_size,
        "mean": list(model.mean),
        "std": list(model.std),
    }
    # the card is complete before anything is written: the weights never replace a file whose
    # card then fails to follow
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    (args.out / f"{args.model}.json").write_text(json.dumps(card, indent=2) + "\n")
    if args.checkpoint:
        checkpoint_file(args).unlink(missing_ok=True)  # the run is complete: a new one starts afresh
    print(json.dumps({"weights": str(weights), "val": result["val"]}))


if __name__ == "__main__":
    main()
