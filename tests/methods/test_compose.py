"""Composition: the first method's loss, every method's hooks, and every method's reported values."""

from __future__ import annotations

import pytest
import torch

from modgap.errors import ConfigError
from modgap.methods import build_method
from modgap.methods.compose import Composite, check_method_options
from modgap.models.classifier import ModelOutput

MODS, DIMS = ("a", "b"), {"a": 3, "b": 3}


def composite(name: str, **options) -> Composite:
    method = build_method({"name": name, **options}, MODS, 3, DIMS)
    assert isinstance(method, Composite)
    return method


def test_scalars_of_every_part_merged():
    method = composite("lfm-lb+gblend")
    assert method.scalars() == {"alpha": pytest.approx(0.37), "weight/fused": pytest.approx(1 / 3),
                                "weight/a": pytest.approx(1 / 3), "weight/b": pytest.approx(1 / 3)}


def test_a_name_two_parts_report_is_kept_under_the_second_ones_name():
    method = composite("ogm-ge+agm")
    method.parts[0].applied = {"a": 0.5, "b": 1.0}
    method.parts[1].applied = {"a": 1.0, "b": 2.0}
    assert method.scalars() == {"k/a": 0.5, "k/b": 1.0, "agm/k/a": 1.0, "agm/k/b": 2.0}


def test_eval_outputs_come_from_the_part_that_has_them():
    method = composite("ogm-ge+lfm-h", matching="infonce", proj_dim=4)
    feats = {m: torch.randn(5, 3) for m in MODS}
    out = ModelOutput(fused=torch.zeros(5, 3), logits={m: torch.zeros(5, 3) for m in MODS}, features=feats)
    got = method.eval_outputs(out)
    assert set(got) == {"projection/a", "projection/b"}
    assert torch.allclose(got["projection/a"].norm(dim=1), torch.ones(5))


def test_an_option_two_parts_declare_must_be_qualified():
    with pytest.raises(ConfigError, match="write method.ogm-ge.alpha or method.agm.alpha"):
        check_method_options({"name": "ogm-ge+agm", "alpha": 0.3})
    (_, ogm), (_, agm) = check_method_options({"name": "ogm-ge+agm", "ogm-ge": {"alpha": 0.3}})
    assert ogm.alpha == 0.3 and agm.alpha != 0.3
