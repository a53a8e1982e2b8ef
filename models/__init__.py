"""DyNN Explorer's dynamic models. Importing this package registers every model family."""

from models import block_skip, early_exit, pixel_mask, vit  # noqa: F401  (registers the model families)
from models.core import Card, DynamicModel, Knob, Trace, Unit, available, get, model_class, register

__all__ = ["Card", "DynamicModel", "Knob", "Trace", "Unit", "available", "get", "model_class", "register"]
