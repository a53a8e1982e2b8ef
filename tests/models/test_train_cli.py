"""``python -m models.train`` end to end on a few images: weights and a card that names the
whole recipe, including where the weights started from."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import models
from models import train
from models.evaluate import sha256
from models.train import main, parse_args, recorded_command


@pytest.mark.dataset
def test_a_short_run_writes_weights_and_a_complete_card(cifar_path, tmp_path):
    init = models.model_class("early_exit")().card.weights
    main(["--model", "block_skip", "--data", str(cifar_path), "--epochs", "1", "--limit", "64",
          "--batch-size", "32", "--out", str(tmp_path), "--init", str(init), "--loss", "target_rate=0.6",
          "--cutout", "8"])  # fmt: skip
    card = json.loads((tmp_path / "block_skip.json").read_text())
    assert card["training"]["loss"] == {"target_rate": 0.6, "rate_weight": 2.0, "all_on_share": 0.25}
    assert card["training"]["augmentation"] == "random crop (4-pixel reflect padding), flip, cutout 8"
    assert card["initialised_from"]["sha256"] == sha256(init)
    assert "gates.0" in card["new_modules_at_init"] and "stem" not in card["new_modules_at_init"]
    assert set(card["val_accuracy"]) == {"all_blocks", "threshold_0.5"}
    assert card["training"]["bf16"] == train.bf16_native(torch.device("cpu")) and card["training"]["device"] == "cpu"
    fresh = models.model_class("block_skip")()
    assert set(load_file(str(tmp_path / "block_skip.safetensors"))) == set(fresh.state_dict())


@pytest.mark.dataset
def test_a_card_keeps_its_whole_lineage_and_names_its_augmentation(cifar_path, tmp_path):
    """Three runs, each from the last one's weights and card: the third card holds the second's
    training and, nested, the first's, down to a run from scratch."""
    base = ["--model", "early_exit", "--data", str(cifar_path), "--epochs", "1", "--limit", "32", "--batch-size", "32"]
    extra = {"a": ["--autoaugment", "--mix"], "b": ["--cutout", "8", "--mix"], "c": []}
    for run, before in zip("abc", [None, "a", "b"], strict=True):
        start = [] if before is None else ["--init", str(tmp_path / before / "early_exit.safetensors"),
                                           "--init-card", str(tmp_path / before / "early_exit.json")]  # fmt: skip
        main([*base, "--out", str(tmp_path / run), *start, *extra[run]])
    cards = {run: json.loads((tmp_path / run / "early_exit.json").read_text()) for run in "abc"}
    assert cards["a"]["training"]["augmentation"] == (
        "random crop (4-pixel reflect padding), flip, AutoAugment (CIFAR-10 policy), CutMix or MixUp"
    )
    assert cards["b"]["training"]["augmentation"].endswith("flip, cutout 8, CutMix or MixUp")
    lineage = cards["c"]["initialised_from"]
    assert lineage["sha256"] == sha256(tmp_path / "b" / "early_exit.safetensors")
    assert lineage["training"] == cards["b"]["training"]
    assert lineage["initialised_from"]["training"] == cards["a"]["training"]
    assert lineage["initialised_from"]["initialised_from"] is None and cards["a"]["initialised_from"] is None


def test_a_limited_run_may_not_replace_the_shipped_weights():
    with pytest.raises(SystemExit):
        main(["--model", "block_skip", "--epochs", "1", "--limit", "10"])


@pytest.mark.parametrize(
    ("native", "flag", "bf16"), [(True, [], True), (True, ["--no-bf16"], False), (False, [], False)]
)
def test_bf16_autocast_only_where_the_cpu_has_native_kernels(monkeypatch, tmp_path, native, flag, bf16):
    monkeypatch.setattr(train, "bf16_native", lambda device: native)
    assert parse_args(["--model", "early_exit", "--out", str(tmp_path), *flag]).bf16 is bf16


def test_cuda_is_refused_where_torch_sees_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        parse_args(["--model", "early_exit", "--out", str(tmp_path), "--device", "cuda"])


def test_a_training_step_keeps_every_tensor_on_the_gpu():
    """No GPU here: torch's fake tensors stand in for CUDA ones (shapes and devices, no data), and
    they refuse any operation that mixes devices, as a GPU would. Augmentation, the early-exit
    model's loss and the validation forward stay on the device, and the logs are tensors, so a
    step never waits for the GPU. (The backward pass needs a real GPU: autograd's engine asks
    the driver.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from models.data import augment

    model = models.model_class("early_exit")().train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to("cuda", memory_format=torch.channels_last)
        x = augment(torch.empty(8, 3, 32, 32, device="cuda"), torch.Generator().manual_seed(0))
        loss, logs = model.training_loss(x, torch.zeros(8, dtype=torch.long, device="cuda"), exit_weight=0.5)
        assert loss.device.type == "cuda" and all(v.device.type == "cuda" for v in logs.values())
        assert model.eval().monitor_batch(x).device.type == "cuda"
        with pytest.raises(RuntimeError, match="same device"):  # the stand-in does catch a mix-up
            model.training_loss(x.cpu(), torch.zeros(8, dtype=torch.long, device="cuda"))


@pytest.mark.dataset
def test_a_run_in_pieces_ends_with_the_weights_of_one_uninterrupted_run(cifar_path, tmp_path):
    """``--checkpoint`` with ``--stop-after``: the schedule split over two invocations (as over
    two sessions of a CPU-only machine) restores the optimizer, the step and both random
    generators, so the weights are bit for bit those of one run (at the same thread count);
    nothing is written early, and the card's command is the recipe, not how it was split."""
    # with AutoAugment and mixing, whose draws (torch's generator) must resume too
    run = ["--model", "early_exit", "--data", str(cifar_path), "--epochs", "2", "--limit", "64", "--batch-size", "32",
           "--threads", "1", "--autoaugment", "--mix"]  # fmt: skip
    main([*run, "--out", str(tmp_path / "whole")])
    ckpt = tmp_path / "ckpt"
    pieces = [*run, "--out", str(tmp_path / "whole"), "--checkpoint", str(ckpt)]
    pieces[pieces.index(str(tmp_path / "whole"))] = str(tmp_path / "pieces")
    main([*pieces, "--stop-after", "1"])
    assert not (tmp_path / "pieces").exists()  # an unfinished schedule writes no weights
    main(pieces)
    whole = load_file(str(tmp_path / "whole" / "early_exit.safetensors"))
    split = load_file(str(tmp_path / "pieces" / "early_exit.safetensors"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    card = json.loads((tmp_path / "pieces" / "early_exit.json").read_text())["training"]
    whole_card = json.loads((tmp_path / "whole" / "early_exit.json").read_text())["training"]
    assert card["resumed_at_epochs"] == [1] and whole_card["resumed_at_epochs"] == []
    assert "--checkpoint" not in card["command"] and "--stop-after" not in card["command"]
    assert not (ckpt / "early_exit.pt").exists()  # a finished run leaves no checkpoint to "resume"


@pytest.mark.dataset
def test_a_resumed_run_reports_the_start_it_really_had(cifar_path, tmp_path):
    """The starting weights' hash and lineage are read when the run starts: replacing the file
    between two sessions changes neither the weights nor the card."""
    init = tmp_path / "start.safetensors"
    init.write_bytes(models.model_class("early_exit")().card.weights.read_bytes())
    started = sha256(init)
    run = ["--model", "early_exit", "--data", str(cifar_path), "--epochs", "2", "--limit", "32", "--batch-size", "32",
           "--init", str(init), "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ckpt")]  # fmt: skip
    main([*run, "--stop-after", "1"])
    init.write_bytes(b"replaced")
    main(run)
    assert json.loads((tmp_path / "out" / "early_exit.json").read_text())["initialised_from"]["sha256"] == started


@pytest.mark.dataset
@pytest.mark.parametrize(
    "change", [["--epochs", "3"], ["--lr", "0.05"], ["--cutout", "8"], ["--mix"], ["--autoaugment"], "data"]
)
def test_a_checkpoint_of_another_schedule_or_data_is_refused(cifar_path, tmp_path, change):
    run = ["--model", "early_exit", "--data", str(cifar_path), "--epochs", "2", "--limit", "32", "--batch-size", "32",
           "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ckpt"), "--stop-after", "1"]  # fmt: skip
    main(run)
    if change == "data":
        other = tmp_path / "other.zip"
        other.write_bytes(cifar_path.read_bytes()[:-1] if cifar_path.is_file() else b"")
        run[run.index(str(cifar_path))] = str(other)
    else:
        run += change
    with pytest.raises(SystemExit, match="another run's checkpoint"):
        main(run)


@pytest.mark.dataset
def test_a_checkpoint_from_before_an_option_existed_still_resumes(cifar_path, tmp_path):
    """A checkpoint's schedule without a later-added option ran without it: it resumes the same
    run (and is refused for a run that uses the option)."""
    run = ["--model", "early_exit", "--data", str(cifar_path), "--epochs", "2", "--limit", "32", "--batch-size", "32",
           "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ckpt")]  # fmt: skip
    main([*run, "--stop-after", "1"])
    path = tmp_path / "ckpt" / "early_exit.pt"
    state = torch.load(path, weights_only=True)
    for key in train.ADDED_TO_SCHEDULE:
        del state["schedule"][key]
    torch.save(state, path)
    with pytest.raises(SystemExit, match="another run's checkpoint"):
        main([*run, "--mix"])
    main(run)
    assert json.loads((tmp_path / "out" / "early_exit.json").read_text())["training"]["resumed_at_epochs"] == [1]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--epochs", "0"], "at least 1"),
        (["--batch-size", "0"], "at least 1"),
        (["--limit", "0"], "at least 1"),
        (["--loss", "exit_wieght=0.3"], "not exit_wieght"),
        (["--loss", "exit_weight"], "not KEY=VALUE"),
        (["--loss", "exit_weight=lots"], "could not convert"),
    ],
)
def test_a_run_that_could_not_end_well_is_refused_before_it_starts(tmp_path, capsys, args, says):
    """No epoch would leave untrained weights where a card fails to follow; a misspelt loss
    setting would fail only at the first step, after the data was read."""
    with pytest.raises(SystemExit):
        parse_args(["--model", "early_exit", "--out", str(tmp_path), *args])
    assert says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_decoded_data_cache_is_written_whole_by_runs_started_together(tmp_path, monkeypatch):
    """Runs started together each write their own temporary file and rename it into place."""
    import threading

    import numpy as np

    from models import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    images, labels = np.zeros((2000, 32, 32, 3), np.uint8), np.arange(2000) % 10
    together = threading.Barrier(6)  # every run has decoded, none has written yet

    def decoded(folder):
        together.wait()
        return images, labels

    monkeypatch.setattr(data, "_torchvision_split", decoded)
    errors = []

    def load():
        try:
            data._cached_raw(None, "train")
        except Exception as err:  # any failure fails the test
            errors.append(err)

    runs = [threading.Thread(target=load) for _ in range(6)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert errors == []
    cache = tmp_path / "dynn-explorer"
    assert [p.name for p in cache.iterdir()] == ["cifar10-torchvision-train.npz"]  # no temporary file left
    with np.load(cache / "cifar10-torchvision-train.npz") as npz:
        assert (npz["labels"] == labels).all()


def test_stop_after_needs_a_checkpoint(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--model", "early_exit", "--out", str(tmp_path), "--stop-after", "1"])


def test_the_recorded_command_leaves_out_how_the_run_was_split():
    argv = ["--model", "early_exit", "--epochs", "40", "--checkpoint", "ckpt", "--stop-after=3", "--lr", "0.1"]
    assert recorded_command(argv) == "python -m models.train --model early_exit --epochs 40 --lr 0.1"


@pytest.mark.parametrize(
    ("done", "pace", "left", "planned", "fit"),
    [(1, 10.0, 95.0, 200, 10), (3, 10.0, 5.0, 200, 3), (1, 10.0, 1e6, 40, 40), (2, 10.0, -30.0, 40, 2)],
)
def test_a_time_budget_plans_the_epochs_that_fit(done, pace, left, planned, fit):
    assert train.epochs_that_fit(done, pace, left, planned) == fit


@pytest.mark.dataset
def test_a_time_budget_ends_the_run_early_with_a_validated_card(cifar_path, tmp_path, capsys):
    """A budget spent by the first epoch ends the run there: validated, written, and the card
    says how many epochs ran and under which budget."""
    main(["--model", "early_exit", "--data", str(cifar_path), "--epochs", "5", "--limit", "64",
          "--batch-size", "32", "--out", str(tmp_path), "--time-budget", "0.01"])  # fmt: skip
    card = json.loads((tmp_path / "early_exit.json").read_text())
    assert card["training"]["epochs"] == 1
    assert card["training"]["time_budget_s"] == 0.01 and card["training"]["epochs_at_most"] == 5
    assert len(card["val_accuracy"]) == len(models.model_class("early_exit")().monitor_names)
    assert '"plan": 1' in capsys.readouterr().out


def test_a_time_budget_cannot_be_resumed(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--model", "early_exit", "--out", str(tmp_path), "--time-budget", "60", "--checkpoint", "c"])
