"""benchmarks/teachers/: every published teacher loads into the network its run trained, and
is the file its results table names (sha256), so a table continued elsewhere distils from it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from kdlab.models import build_model
from kdlab.training.build import load_weights, weights_spec

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = sorted((ROOT / "benchmarks" / "teachers").glob("*/*/teacher.safetensors"))


def test_there_are_published_teachers():
    assert PUBLISHED, "benchmarks/teachers/ holds no teacher.safetensors"


@pytest.mark.parametrize("weights", PUBLISHED, ids=lambda p: f"{p.parent.parent.name}/"
                                                             f"{p.parent.name}")
def test_a_published_teacher_loads_and_is_the_tables(weights: Path):
    cfg = yaml.safe_load((weights.parent / "config.yaml").read_text())
    spec = weights_spec(weights)
    assert (spec["model"], cfg["data"]["name"]) == (weights.parent.name,
                                                   weights.parent.parent.name)
    net = build_model(spec["model"], num_classes=int(spec["num_classes"]),
                      in_channels=int(spec["in_channels"]), input_size=int(spec["input_size"]))
    load_weights(weights, net.net)  # a shape mismatch or a broken file raises

    table = ROOT / "benchmarks" / "results" / f"{cfg['data']['name']}_accuracy.md"
    named = re.search(r"teacher weights: `([^`]+)` \(sha256 ([0-9a-f]{64})\)", table.read_text())
    assert named, f"{table.name} does not name its teacher's weights"
    assert ROOT / named[1] == weights
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == named[2]
