"""CIFAR-10 loading from a zip or a folder in ImageFolder layout, on a tiny generated copy."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import CLASSES, augment, auto_augment, cutout, load_split, mix, to_tensor
from tests.conftest import encode

PER_CLASS = {"train": 20, "test": 3}


def colour(split: str, c: int, i: int) -> tuple[int, int, int]:
    return (c * 25, i * 10, 200 if split == "test" else 50)


@pytest.fixture
def tiny_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "folder"
    zpath = tmp_path / "cifar.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for split, n in PER_CLASS.items():
            for c, name in enumerate(CLASSES):
                for i in range(n):
                    data = encode(Image.new("RGB", (32, 32), colour(split, c, i)), "PNG")
                    zf.writestr(f"cifar10/{split}/{name}/{i:04d}.png", data)  # a top folder, as some zips have
                    path = folder / split / name / f"{i:04d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
    return zpath, folder


def test_zip_and_folder_give_the_same_splits(tiny_sources):
    zpath, folder = tiny_sources
    for split in ("train", "val", "test"):
        a, b = load_split(split, zpath), load_split(split, folder)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_split_sizes_and_labels(tiny_sources):
    zpath, _ = tiny_sources
    train, val, test = (load_split(s, zpath) for s in ("train", "val", "test"))
    assert len(test) == 30 and len(val) == 20 and len(train) == 180  # val: a tenth of each class
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    # labels match the class folder: the red channel encodes the class in this copy
    np.testing.assert_array_equal(test.images[:, 0, 0, 0] // 25, test.labels)


def test_validation_is_held_out_of_train(tiny_sources):
    zpath, _ = tiny_sources
    train, val = load_split("train", zpath), load_split("val", zpath)
    key = lambda s: {(int(lbl), int(img[0, 0, 1])) for img, lbl in zip(s.images, s.labels, strict=True)}  # noqa: E731
    assert not key(train) & key(val)
    assert len(key(train) | key(val)) == 200


def test_any_prefix_is_class_balanced(tiny_sources):
    zpath, _ = tiny_sources
    test = load_split("test", zpath).head(10)
    assert sorted(test.labels.tolist()) == list(range(10))


def test_missing_source_and_bad_split(tmp_path, monkeypatch):
    monkeypatch.delenv("DYNN_CIFAR10", raising=False)
    with pytest.raises(FileNotFoundError):
        load_split("test")
    with pytest.raises(FileNotFoundError):
        load_split("test", tmp_path / "nope.zip")
    with pytest.raises(ValueError):
        load_split("holdout", tmp_path)


def test_to_tensor_and_augment_shapes():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    x = to_tensor(images, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (4, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # a crop of a reflect-padded image only contains values of the original
    assert set(out[0].unique().tolist()) <= set(x[0].unique().tolist())


def test_cutout_blanks_one_clipped_square_per_image_in_every_channel():
    x = torch.ones(64, 3, 32, 32)
    assert cutout(x, 0, torch.Generator().manual_seed(0)) is x
    out = cutout(x, 16, torch.Generator().manual_seed(0))
    assert torch.equal(out, cutout(x, 16, torch.Generator().manual_seed(0)))  # the generator decides
    assert torch.equal(x, torch.ones_like(x))  # the batch itself is left alone
    holes = out == 0
    assert torch.equal(holes, holes[:, :1].expand_as(holes))  # the same square in all channels
    rows, cols = holes[:, 0].any(2), holes[:, 0].any(1)  # (B, H), (B, W)
    # a rectangle: every pixel of its rows and columns is blanked, nothing else
    assert torch.equal(holes[:, 0], rows[:, :, None] & cols[:, None, :])
    # 16 pixels a side, clipped at the border to no less than half
    for extent in (rows.sum(1), cols.sum(1)):
        assert extent.min() >= 8 and extent.max() == 16
    assert len({tuple(r.nonzero()[:, 0].tolist()) for r in rows}) > 16  # squares land all over


def test_mix_pairs_each_image_with_its_neighbour_and_weighs_the_labels_by_what_it_took():
    """CutMix or MixUp: image i is mixed with image i - 1 (the batch rolled by one), and the soft
    label gives each of the two classes the share of the image it contributed. With image i a
    constant i, an image's mean is then w * i + (1 - w) * (i - 1), w the weight of its own class."""
    b = len(CLASSES)
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 32, 32).contiguous()
    y = torch.arange(b)
    kinds = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out, soft = mix(x, y, b)
        assert out.shape == x.shape and soft.shape == (b, b)
        assert torch.allclose(soft.sum(1), torch.ones(b))
        for i in range(b):
            partner = (i - 1) % b
            w = soft[i, i]
            assert torch.allclose(soft[i, partner], 1 - w) and soft[i].count_nonzero() <= 2
            assert torch.isclose(out[i].mean(), w * i + (1 - w) * partner, atol=1e-4)
        values = out[1].unique()  # CutMix pastes pixels (two values); MixUp blends (one value)
        kinds.add("cutmix" if len(values) == 2 else "mixup")
        torch.manual_seed(seed)
        assert torch.equal(mix(x, y, b)[0], out)  # torch's seeded generator decides
    assert kinds == {"cutmix", "mixup"}


def test_auto_augment_works_on_a_normalised_batch_and_draws_per_chunk():
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    images = torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = (images - m) / s
    torch.manual_seed(0)
    out = auto_augment(x, mean, std, chunk=32)
    torch.manual_seed(0)
    assert torch.equal(auto_augment(x, mean, std, chunk=32), out)
    assert out.shape == x.shape and out.dtype == x.dtype
    back = out * s + m  # normalised as it came: back in [0, 1] once the normalisation is undone
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    changed = [(a != b).any().item() for a, b in zip(out.split(32), x.split(32), strict=True)]
    assert any(changed)
    # chunks draw their own sub-policies: the eight chunks are not all changed alike
    deltas = {round(float((a - b).abs().mean()), 4) for a, b in zip(out.split(32), x.split(32), strict=True)}
    assert len(deltas) > 2


def test_debris_and_lookalike_folders_are_ignored(tiny_sources, tmp_path):
    zpath, folder = tiny_sources
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr("__MACOSX/cifar10/test/cat/._0000.png", b"\x00\x05\x16\x07 resource fork")
        zf.writestr("cifar10/latest/cat/0000.png", encode(Image.new("RGB", (32, 32)), "PNG"))
    (folder / "test" / "not_a_class").mkdir()
    (folder / "test" / "not_a_class" / "x.png").write_bytes(b"junk")
    for source in (zpath, folder):
        assert len(load_split("test", source)) == 30


def test_head_refuses_non_positive_sizes(tiny_sources):
    zpath, _ = tiny_sources
    with pytest.raises(ValueError):
        load_split("test", zpath).head(0)


def test_download_fetches_torchvisions_copy_for_the_clis(tmp_path, monkeypatch, capsys):
    """With no --data and no $DYNN_CIFAR10, ``--download`` gets CIFAR-10 from torchvision into
    the user cache (faked here: this machine has no network), for training and evaluation."""
    import json

    from models import data, evaluate, train

    monkeypatch.delenv("DYNN_CIFAR10", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    asked = []

    def fake_download(folder):
        asked.append(folder)
        n = 200 if folder == "train" else 50
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10

    monkeypatch.setattr(data, "_torchvision_split", fake_download)
    with pytest.raises(FileNotFoundError, match="--download"):
        evaluate.main(["--model", "early_exit", "--limit", "20"])
    evaluate.main(["--model", "early_exit", "--limit", "20", "--download"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 20
    train.main(["--model", "early_exit", "--epochs", "1", "--limit", "32", "--batch-size", "32", "--download",
                "--out", str(tmp_path / "out")])  # fmt: skip
    card = json.loads((tmp_path / "out" / "early_exit.json").read_text())
    assert "torchvision" in card["training"]["data"] and asked == ["test", "train"]  # each fetched once, then cached
