"""Where a model looks: captum attributions of the function a trace's run computed.

Methods (captum's one verb, ``attribute``): Grad-CAM (Selvaraju et al., ICCV 2017,
arXiv:1610.02391) and saliency (Simonyan et al., 2014, arXiv:1312.6034) are one backward pass
each; integrated gradients (Sundararajan et al., ICML 2017, arXiv:1703.01365) and occlusion
(Zeiler & Fergus, ECCV 2014, arXiv:1311.2901) take tens to hundreds of forward passes.

Each map is reduced to one non-negative value per input pixel, scaled to a maximum of 1, so
maps of different methods and models share one colour scale. :func:`agreement` asks the
pixel-mask question: do the most attributed pixels lie where the network computed?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

from models.core import DynamicModel, Trace

METHODS = {
    "gradcam": "Grad-CAM",
    "saliency": "Saliency",
    "integrated_gradients": "Integrated gradients",
    "occlusion": "Occlusion",
}
LIVE = ("gradcam", "saliency")  # cheap enough to follow every slider move
IG_STEPS = 32
OCCLUSION_WINDOW, OCCLUSION_STRIDE = 6, 2  # pixels of the 32x32 input: 14x14 occluded positions


def attribute(model: DynamicModel, x: torch.Tensor, trace: Trace, method: str, *, static: bool = False) -> np.ndarray:
    """``(H, W)`` attribution of ``trace``'s predicted class, for what the run computed (or the
    static network), in [0, 1].

    Args:
        model: the model that produced ``trace``.
        x: ``(1, 3, H, W)`` the preprocessed input of the trace.
        trace: the run to explain.
        method: a key of :data:`METHODS`.
        static: explain the static network (for the early-exit model: the last exit).
    """
    explained = model.explained_forward(trace, static=static)
    target = trace.prediction
    x = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        if method == "gradcam":
            cam = LayerGradCam(explained.forward, explained.tap).attribute(
                x, target=target, relu_attributions=True
            )  # (1, 1, h, w)
            raw = upsample(cam, tuple(x.shape[-2:]), explained.tap_centre)[0, 0]
        elif method == "saliency":
            raw = Saliency(explained.forward).attribute(x, target=target, abs=True)[0].amax(0)
        elif method == "integrated_gradients":
            ig = IntegratedGradients(explained.forward)
            raw = ig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=IG_STEPS,
                               internal_batch_size=IG_STEPS)[0].abs().sum(0)  # fmt: skip
        elif method == "occlusion":
            w, s = OCCLUSION_WINDOW, OCCLUSION_STRIDE
            raw = (
                Occlusion(explained.forward)
                .attribute(
                    x,
                    sliding_window_shapes=(3, w, w),
                    strides=(3, s, s),
                    target=target,
                    baselines=0.0,
                    perturbations_per_eval=64,
                )[0]
                .sum(0)
                .clamp(min=0)
            )  # fmt: skip  (pixels whose occlusion lowers the class score)
        else:
            raise ValueError(f"unknown attribution method {method!r}; one of {list(METHODS)}")
    return normalise(raw.detach().float().numpy())


def upsample(cam: torch.Tensor, size: tuple[int, int], centre: float | None = None) -> torch.Tensor:
    """A ``(1, 1, h, w)`` map bilinearly to ``size``: each cell centred on the middle of its
    square of pixels (captum's interpolation), or, with ``centre``, cell ``j`` on pixel
    ``centre + j * size / h`` (the map's border values beyond its first and last cells)."""
    if centre is None:
        return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")
    (h, w), (rows, cols) = cam.shape[-2:], size
    ys = (torch.arange(rows, dtype=cam.dtype) - centre) / (rows / h)  # in cells
    xs = (torch.arange(cols, dtype=cam.dtype) - centre) / (cols / w)
    gy, gx = torch.meshgrid(ys / (h - 1) * 2 - 1, xs / (w - 1) * 2 - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]  # (1, rows, cols, 2): x first, as grid_sample reads it
    return F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True)


def normalise(values: np.ndarray) -> np.ndarray:
    """Non-negative, scaled to a maximum of 1 (all zeros stay zeros)."""
    values = np.maximum(values, 0.0)
    peak = values.max()
    return values / peak if peak > 0 else values


def top_count(values: np.ndarray, share: float = 0.2) -> int:
    """How many pixels :func:`top_share` takes: ``share`` of them, or the fewer above zero."""
    flat = values.ravel()
    return min(max(1, round(share * flat.size)), int((flat > 0).sum()))


def top_share(values: np.ndarray, share: float = 0.2, *, count: int | None = None) -> np.ndarray:
    """Bool ``(H, W)``: the ``share`` of pixels with the highest values, among those above zero
    (``count``: that many instead, at most :func:`top_count`). A map with fewer positive pixels
    (Grad-CAM after its ReLU) gives fewer: zeros tied at the bottom are not "top", and taking
    them in order would pick the image's top rows."""
    flat = values.ravel()
    k = top_count(values, share) if count is None else min(count, top_count(values, share))
    top = np.zeros(flat.size, bool)
    top[np.argsort(-flat, kind="stable")[:k]] = True
    return top.reshape(values.shape)


@dataclass(frozen=True)
class Agreement:
    """How the top attributed pixels sit with the masks: the share of them each block
    computed (``per_block``), their mean over blocks (``inside``), and the same mean over all
    pixels (``chance``: what a map unrelated to the masks would score)."""

    per_block: tuple[float, ...]
    inside: float
    chance: float

    @property
    def lift(self) -> float:
        return self.inside / self.chance if self.chance > 0 else float("nan")


def agreement(values: np.ndarray, masks: list[np.ndarray], *, share: float = 0.2) -> Agreement:
    """Agreement of an attribution map ``(H, W)`` with per-block masks ``(h, h)`` (nearest
    upsampled to ``H``)."""
    top = top_share(values, share)
    size = values.shape[0]
    up = [F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(size, size)).numpy()[0, 0] > 0.5
          for m in masks]  # fmt: skip
    per_block = tuple(float(m[top].mean()) if top.any() else float("nan") for m in up)  # nan: nothing attributed
    return Agreement(per_block, float(np.mean(per_block)), float(np.mean([m.mean() for m in up])))
