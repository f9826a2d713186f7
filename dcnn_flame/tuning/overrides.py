"""Dotted-key overrides of a dataclass config (what a Tune trial changes in its TrainConfig)."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping

__all__ = ["apply_overrides", "get_value"]


def _walk(cfg: Any, key: str) -> tuple[Any, str]:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            raise KeyError(f"config key {key!r}: {'.'.join(parts[:i + 1])!r} does not exist "
                           f"(keys are dotted TrainConfig paths such as loss.content or model.backbone)")
        node = getattr(node, part)
    leaf = parts[-1]
    if not dataclasses.is_dataclass(node) or leaf not in {f.name for f in dataclasses.fields(node)}:
        known = sorted(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else []
        raise KeyError(f"config key {key!r}: no field {leaf!r} here (fields: {known})")
    return node, leaf


def get_value(cfg: Any, key: str) -> Any:
    """The value at dotted ``key`` of a (nested) dataclass."""
    node, leaf = _walk(cfg, key)
    return getattr(node, leaf)


def apply_overrides(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """A deep copy of dataclass ``cfg`` with ``{"a.b": value}`` overrides applied.

    Values keep the field's type where it is a plain number (an int 1 given for a float field
    becomes 1.0); dataclasses with validation (``__post_init__``) are re-validated.

    Raises:
        KeyError: an unknown key, naming it and the fields that exist.
    """
    out = copy.deepcopy(cfg)
    touched = []
    for key, value in overrides.items():
        node, leaf = _walk(out, key)
        old = getattr(node, leaf)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        setattr(node, leaf, value)
        touched.append(node)
    for node in touched:
        post = getattr(node, "__post_init__", None)
        if post is not None:
            post()
    return out
