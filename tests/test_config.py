"""The config's `methods` section: per-dataset settings of each method, chosen by `--method`."""

from __future__ import annotations

import pytest

from modgap.config import make_config, method_with_settings
from modgap.errors import ConfigError

SETTINGS = {"ogm-ge": {"alpha": 0.8, "modulation_ends": 40}, "lfm-lb": {"alpha0": 0.3}}


def test_the_running_methods_settings_apply_under_explicit_values():
    assert method_with_settings({"name": "ogm-ge"}, SETTINGS) == {"name": "ogm-ge", "alpha": 0.8, "modulation_ends": 40}
    assert method_with_settings({"name": "ogm-ge", "alpha": 0.2}, SETTINGS)["alpha"] == 0.2
    assert method_with_settings({"name": "joint"}, SETTINGS) == {"name": "joint"}


def test_a_composition_gets_each_parts_settings_nested():
    spec = method_with_settings({"name": "lfm-lb+ogm-ge", "ogm-ge": {"ge": False}, "every": 3}, SETTINGS)
    assert spec == {"name": "lfm-lb+ogm-ge", "lfm-lb": {"alpha0": 0.3},
                    "ogm-ge": {"alpha": 0.8, "modulation_ends": 40, "ge": False}, "every": 3}


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("method: {name: lfm-lb}\nmethods:\n  ogm-ge: {alpha: 0.8}\n  lfm-lb: {alpha0: 0.3}\n")
    assert make_config(path).method == {"name": "lfm-lb", "alpha0": 0.3}
    assert make_config(path, {"method": {"name": "ogm-ge"}}).method == {"name": "ogm-ge", "alpha": 0.8}
    assert make_config(path, {"method": {"name": "ogm-ge"}}, ["method.alpha=0.5"]).method["alpha"] == 0.5
    resolved = make_config(path, {"method": {"name": "ogm-ge"}})
    again = make_config(None, resolved.to_dict())  # a run's saved config.yaml resolves to itself
    assert again.method == resolved.method


def test_bad_settings_are_one_line(tmp_path, cli):
    path = tmp_path / "d.yaml"
    path.write_text("methods:\n  ogm-ge: 0.8\n")
    with pytest.raises(ConfigError, match="methods.ogm-ge: expected a mapping"):
        make_config(path)
    path.write_text("methods:\n  ogm-ge: {alpah: 0.8}\n")
    code, _, err = cli("train", "--config", str(path), "--method", "joint", "--quiet")
    assert code == 2 and "unknown key 'methods.ogm-ge.alpah' (did you mean 'methods.ogm-ge.alpha'?)" in err
    assert str(path) in err and len(err.strip().splitlines()) == 1
    path.write_text("methods:\n  ogm_ge: {alpha: 0.8}\n")
    code, _, err = cli("train", "--config", str(path), "--method", "joint", "--quiet")
    assert code == 2 and "methods.ogm_ge: unknown method 'ogm_ge' (did you mean 'ogm-ge'?)" in err
