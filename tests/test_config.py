"""The flat config: default.yaml maps one to one onto Config; unknown keys are named."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

import wdstream
from wdstream.config import Config

ROOT = os.path.dirname(os.path.dirname(__file__))
DEFAULT = os.path.join(ROOT, "configs", "default.yaml")


def test_default_yaml_maps_one_to_one_onto_config():
    with open(DEFAULT) as f:
        keys = list(yaml.safe_load(f))
    assert keys == [f.name for f in dataclasses.fields(Config)]
    assert wdstream.load_config(DEFAULT) == Config()


def test_unknown_key_names_the_key_and_closest_valid_one(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("vocab_sise: 1000\n")
    with pytest.raises(wdstream.ConfigError, match="'vocab_sise'.*did you mean 'vocab_size'"):
        wdstream.load_config(str(bad))
    with pytest.raises(wdstream.ConfigError, match="'cache_sze'.*'cache_size'"):
        wdstream.load_config(DEFAULT, cache_sze=3)


def test_overrides_and_seed_names():
    c = wdstream.load_config(DEFAULT, vision_dim=64, max_audio_length=8000, text_columns="a,b")
    assert (c.vision_dim, c.max_audio_length, c.vocab_size) == (64, 8000, 384)
    assert c.text_columns == ("a", "b")
    with pytest.raises(wdstream.ConfigError, match="fallback"):
        Config(fallback="sometimes")
