"""CIFAR-10 loading for training, evaluation and the app's test-image picker.

CIFAR-10 (Krizhevsky, 2009). Three sources give the same arrays:

* a zip in ImageFolder layout (``train/<class>/N.jpg``, ``test/<class>/N.jpg``), read
  straight from the archive;
* the same layout unpacked in a folder;
* torchvision's ``CIFAR10(download=True)`` into a user cache (for users' machines; never
  used by the tests, which must not download).

Decoded splits are cached as ``.npz`` in the user cache folder, never in the repository.
Images are ``uint8`` arrays shaped ``(N, 32, 32, 3)``; labels are ``int64`` ``(N,)``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
ENV_VAR = "DYNN_CIFAR10"
VAL_SIZE = 5000  # held out of train/ for validation and threshold choice
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One labelled split: images ``(N, 32, 32, 3)`` uint8 and labels ``(N,)`` int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first ``n`` images (all when ``n`` is None), stratified order kept."""
        if n is not None and n < 1:
            raise ValueError(f"need at least one image, got n={n}")
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n])


DOWNLOAD_HELP = (
    "with no --data and no $DYNN_CIFAR10: download CIFAR-10 with torchvision (about 170 MB, once) into the user cache"
)


def cache_dir() -> Path:
    """The user cache folder for decoded splits (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    path = Path(root) / "dynn-explorer"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_source(source: str | os.PathLike | None = None) -> Path | None:
    """The dataset path from the argument or ``$DYNN_CIFAR10``; None when neither is set."""
    value = source or os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else None


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _read_imagefolder(entries: list[tuple[str, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(relative path, bytes)`` pairs ``<split>/<class>/<file>`` in a fixed order."""
    entries = sorted(entries)
    images = np.stack([_decode(data) for _, data in entries])
    labels = np.array([CLASSES.index(name.split("/")[-2]) for name, _ in entries], np.int64)
    return images, labels


def _wanted(parts: tuple[str, ...] | list[str], folder: str) -> bool:
    """``.../<folder>/<class>/<image>``, skipping macOS resource forks and other debris."""
    return (
        len(parts) >= 3
        and parts[-3] == folder
        and parts[-2] in CLASSES
        and parts[-1].lower().endswith((".jpg", ".jpeg", ".png"))
        and not parts[-1].startswith(".")
        and "__MACOSX" not in parts
    )


def _raw_split(path: Path, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``train`` or ``test`` from a zip or a folder in ImageFolder layout."""
    if path.is_file():
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as err:  # not an OSError: callers that expect bad paths would miss it
            raise ValueError(f"{path} is neither a zip nor a folder of {folder}/<class>/ images") from err
        with zf:
            names = [n for n in zf.namelist() if _wanted(n.split("/"), folder)]
            entries = [("/".join(n.split("/")[-3:]), zf.read(n)) for n in names]
    elif path.is_dir():
        files = [p for p in (path / folder).glob("*/*") if _wanted(p.parts, folder)]
        entries = [(f"{folder}/{p.parent.name}/{p.name}", p.read_bytes()) for p in files]
    else:
        raise FileNotFoundError(f"CIFAR-10 source not found: {path}")
    if not entries:
        raise ValueError(f"no {folder}/<class>/*.jpg images in {path}")
    return _read_imagefolder(entries)


def _torchvision_split(folder: str) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(cache_dir() / "torchvision"), train=folder == "train", download=True)
    return np.asarray(ds.data, np.uint8), np.asarray(ds.targets, np.int64)


def _cached_raw(path: Path | None, folder: str) -> tuple[np.ndarray, np.ndarray]:
    if path is None:
        key = "torchvision"
    else:
        # a zip is one file; a folder changes inside its class folders, so stat those too
        stats = [path, *sorted((path / folder).glob("*"))] if path.is_dir() else [path]
        stamp = ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in stats)
        key = hashlib.sha1(f"{path.resolve()}|{stamp}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"cifar10-{key}-{folder}.npz"
    if cached.exists():
        with np.load(cached) as npz:
            return npz["images"], npz["labels"]
    images, labels = _torchvision_split(folder) if path is None else _raw_split(path, folder)
    # a temporary file of this process's own, then an atomic rename: runs started together
    # (make train-gpu starts four) each write their own copy, and the last rename wins whole
    fd, tmp = tempfile.mkstemp(prefix=f"{cached.stem}.", suffix=".tmp.npz", dir=cached.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, images=images, labels=labels)
        os.replace(tmp, cached)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return images, labels


def load_split(split: str, source: str | os.PathLike | None = None, *, download: bool = False) -> Split:
    """Load ``train`` (train/ minus the validation hold-out), ``val`` or ``test``.

    Args:
        split: one of ``train``, ``val``, ``test``.
        source: zip or folder; defaults to ``$DYNN_CIFAR10``.
        download: with no source, fetch torchvision's copy into the user cache.

    Returns:
        The split; ``val`` is a fixed, class-balanced 5,000-image subset of train/.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = resolve_source(source)
    if path is None and not download:
        raise FileNotFoundError(f"no CIFAR-10 source: pass --data, set ${ENV_VAR}, or pass --download")
    images, labels = _cached_raw(path, "test" if split == "test" else "train")
    if split == "test":
        picks = np.arange(len(labels))
    elif split == "val":
        picks = _val_indices(labels)
    else:
        picks = np.setdiff1d(np.arange(len(labels)), _val_indices(labels))
    picks = picks[_interleave(labels[picks])]
    return Split(images[picks], labels[picks])


def _val_indices(labels: np.ndarray) -> np.ndarray:
    """A fixed class-balanced hold-out of ``VAL_SIZE`` images; at most a tenth of each class,
    so a small folder still leaves images to train on. Seeded positions in the source's order:
    the same copy of the data (sorted file names) always gives the same hold-out, but another
    copy (torchvision's arrays, a folder missing a file) gives another. Train and calibrate on
    one copy: validation images of one copy can be training images of another."""
    rng = np.random.default_rng(0)
    per_class = min(VAL_SIZE // len(CLASSES), int(np.bincount(labels, minlength=len(CLASSES)).min()) // 10)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picks))


def _interleave(labels: np.ndarray) -> np.ndarray:
    """An order that cycles through the classes, so any prefix (``--limit N``) is balanced."""
    rng = np.random.default_rng(0)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(CLASSES))]
    n = min(len(p) for p in per_class)
    head = np.stack([p[:n] for p in per_class], axis=1).reshape(-1)
    tail = np.concatenate([p[n:] for p in per_class])
    return np.concatenate([head, tail]).astype(np.int64)


def to_tensor(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> normalised float ``(N, 3, H, W)``."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel reflect padding) and horizontal flip on a batch ``(B, 3, H, W)``, on
    the batch's device; the random draws come from ``generator`` (a CPU one), so a run is the
    same on any device."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 9, (b,), generator=generator).to(x.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, 3, h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, 3, h, w)
    out = out.gather(3, cols)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017, arXiv:1708.04552): a ``size`` x ``size`` square at a
    random centre of each image of a normalised batch ``(B, 3, H, W)`` set to 0, the dataset's
    mean; squares at the border are clipped, as in the paper. ``size`` 0 returns the batch. The
    draws come from ``generator`` (a CPU one), as in :func:`augment`."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    top = torch.randint(0, h, (b, 1), generator=generator).to(x.device) - size // 2
    left = torch.randint(0, w, (b, 1), generator=generator).to(x.device) - size // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size)  # (B, W)
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)


def mix(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019, arXiv:1905.04899) or MixUp (Zhang et al., 2018,
    arXiv:1710.09412), one of the two per batch, each image paired with its neighbour in the
    batch, the mixing ratio drawn from Beta(1, 1) as both papers do on CIFAR: torchvision's
    ``v2.CutMix`` and ``v2.MixUp``. Returns the mixed batch and soft labels ``(B, C)``, which
    ``F.cross_entropy`` takes as class probabilities. The draws come from torch's global CPU
    generator (seeded by the run, saved in its checkpoints), so a run draws the same on any device."""
    return _mixer(num_classes)(x, y)


def auto_augment(x: torch.Tensor, mean: tuple, std: tuple, chunk: int = 64) -> torch.Tensor:
    """AutoAugment's CIFAR-10 policy (Cubuk et al., 2019, arXiv:1805.09501), torchvision's
    ``v2.AutoAugment``, on a normalised batch ``(B, 3, H, W)``. One call draws one sub-policy
    for all the images it gets, so the batch goes in chunks of ``chunk`` images, each with its
    own draw; images are brought to [0, 1] for it and normalised back. Rotations, shears and
    translations fill with black (torchvision's default; Cutout fills with the mean). Draws
    come from torch's global CPU generator, as in :func:`mix`."""
    policy = _auto_augment_policy()
    m, s = _moments(tuple(mean), tuple(std), x.device)
    images = (x * s + m).clamp(0, 1)
    out = torch.cat([policy(part) for part in images.split(chunk)])
    return (out - m) / s


# built once, not on every training step (the transforms hold no random state: torch's does)
@functools.cache
def _mixer(num_classes: int) -> Callable:
    from torchvision.transforms import v2

    return v2.RandomChoice(
        [v2.CutMix(num_classes=num_classes, alpha=1.0), v2.MixUp(num_classes=num_classes, alpha=1.0)]
    )


@functools.cache
def _auto_augment_policy() -> Callable:
    from torchvision.transforms import v2

    return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)


@functools.cache
def _moments(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as ``(1, 3, 1, 1)`` tensors on ``device``, copied there once."""
    return torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1)
