"""Composition: ``--method a+b`` runs several methods' hooks in one training step.

The first method defines the loss, the backward pass and the prediction (e.g. lfm-lb); the others
add what acts on gradients, steps and epochs (e.g. ogm-ge's per-encoder modulation):

    losses, backward, predict                       -> the first method
    after_backward, after_step, on_epoch_*          -> every method, in order
    scalars, eval_outputs                           -> every method's, merged (a name two parts
                                                       report is kept as <method name>/<name>)

Options go to the method whose Options declare them; a key two of them declare must be given as
``method.<method name>.<key>`` (e.g. --set method.ogm-ge.alpha=0.3).

``build_method`` (one method or a composition, from a config's method section) lives here, above
both the interface (base.py) and the composite, so that neither has to import the other back; so does
``check_method_options``, its first half, which needs no data (the CLI calls it before loading any).
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from torch import nn

from ..config import Config, build
from ..errors import ConfigError, closest
from .base import Method, check_method_settings, method_classes


class Composite(Method):
    name = "composite"
    summary = "several methods' hooks in one step (first: loss; all: gradient and epoch hooks)"

    def __init__(self, parts: list[Method]) -> None:
        nn.Module.__init__(self)
        self.parts = nn.ModuleList(parts)
        self.modalities, self.num_classes = parts[0].modalities, parts[0].num_classes
        self.options = {p.name: p.options for p in parts}

    @property
    def first(self) -> Method:
        return cast(Method, self.parts[0])  # nn.ModuleList items are typed as plain Modules

    def steps_per_batch(self) -> int:
        return self.first.steps_per_batch()

    def losses(self, out, batch, ctx):
        return self.first.losses(out, batch, ctx)

    def backward(self, losses, ctx):
        self.first.backward(losses, ctx)

    def takes_own_gradients(self, ctx):
        return self.first.takes_own_gradients(ctx)

    def after_backward(self, ctx):
        for p in self.parts:
            p.after_backward(ctx)

    def after_step(self, ctx):
        for p in self.parts:
            p.after_step(ctx)

    def on_skipped_step(self, ctx):
        for p in self.parts:
            p.on_skipped_step(ctx)

    def on_epoch_start(self, ctx):
        for p in self.parts:
            p.on_epoch_start(ctx)

    def on_epoch_end(self, ctx):
        for p in self.parts:
            p.on_epoch_end(ctx)

    def predict(self, out):
        return self.first.predict(out)

    def scalars(self):
        return _merged(self.parts, lambda p: p.scalars())

    def eval_outputs(self, out):
        return _merged(self.parts, lambda p: p.eval_outputs(out))


def _merged(parts, values) -> dict[str, Any]:
    """The parts' named values in one dict; a name an earlier part already gave is kept as
    ``<method name>/<name>``, so nothing is lost and the first part's names stay as they are."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in values(part).items():
            merged[f"{part.name}/{key}" if key in merged else key] = value
    return merged


def check_method_options(spec: dict[str, Any]) -> list[tuple[type[Method], Any]]:
    """Each method ``spec`` names (one, or the parts of a composition) with its Options built from
    ``spec``: an unknown method or a mistyped ``method.*`` key fails here, before any data is read."""
    spec = dict(spec)
    name = str(spec.pop("name"))
    classes = method_classes(name)
    if len(classes) == 1:
        return [(classes[0], build(classes[0].Options, spec, where="method"))]
    names = [c.name for c in classes]
    fields = {c.name: {f.name for f in dataclasses.fields(c.Options)} for c in classes}
    per: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in spec.items():
        if key in per and isinstance(value, dict):
            per[key].update(value)
            continue
        owners = [n for n in names if key in fields[n]]
        if not owners:
            every = sorted(set().union(*fields.values()) | set(names))
            raise ConfigError(f"unknown key 'method.{key}' for {'+'.join(names)}{closest(key, every, 'method.')}")
        if len(owners) > 1:
            raise ConfigError(
                f"'method.{key}' is an option of {' and '.join(owners)}: "
                f"write method.{owners[0]}.{key} or method.{owners[1]}.{key}"
            )
        per[owners[0]][key] = value
    return [(c, build(c.Options, per[c.name], where=f"method.{c.name}")) for c in classes]


def build_method(
    spec: dict[str, Any], modalities: tuple[str, ...], num_classes: int, feature_dims: dict[str, int]
) -> Method:
    parts = [cls(options, modalities, num_classes, feature_dims) for cls, options in check_method_options(spec)]
    return parts[0] if len(parts) == 1 else Composite(parts)


def check_config_methods(config: Config) -> None:
    """A config's method and ``methods`` section name registered methods and only their options
    (one line naming the key and the closest valid choice otherwise); reads no data."""
    method_classes(config.method["name"])
    check_method_settings(config.methods)
    check_method_options(config.method)
