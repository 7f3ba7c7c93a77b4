"""Step-exact parity: a few of kdlab's own training steps (recipe -> Optimisation.build ->
train_step, the trainer's step) against the reference implementations' own training loops,
run on the same weights, batches and random draws in float64.

The fixtures (``tests/fixtures/parity/trajectory/*.json``) hold, per step, the reference's
learning rate, weighted loss terms and a digest of every tensor (norm and a seeded random
projection of the tensor and of its change), with the references' commits and the command
that produced them (``benchmarks/parity/trajectory.py``); what the cases are is
``benchmarks/parity/trajectory_setup.py``. kdlab must follow each trajectory to a relative
``trajectory_setup.RTOL``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
import parity_setup as P  # noqa: E402
import trajectory_setup as TS  # noqa: E402

FIXTURES = {p.stem: json.loads(p.read_text()) for p in sorted(TS.FIXTURES.glob("*.json"))}


def test_every_case_has_a_fixture_that_names_its_sources():
    assert set(FIXTURES) == set(TS.CASES)
    for name, fx in FIXTURES.items():
        case = TS.CASES[name]
        assert fx["seeds"] == P.SEEDS and fx["batch"] == case.batch
        assert fx["plan"] == [list(e) for e in TS.epochs(TS.recipe(case))]
        assert "trajectory.py" in fx["command"] and fx["dtype"] == "float64"
        assert fx["exclude"] == case.exclude
        for ref in fx["references"].values():
            assert ref["repository"].startswith("github.com/") and len(ref["commit"]) == 40


@pytest.mark.parametrize("name", sorted(TS.CASES))
def test_kdlab_follows_the_reference_trajectory(name):
    case, fx = TS.CASES[name], FIXTURES[name]
    assert TS.method_options(case) == fx["options"], (
        f"the {case.method} recipe changed since the fixture was made: check it against the "
        "reference, then regenerate with benchmarks/parity/trajectory.py")
    cfg = TS.recipe(case)
    optim = {k: getattr(cfg.optim, k) for k in fx["reference_optim"]}
    assert optim == fx["reference_optim"], "kdlab's optimiser is not the reference's"
    assert bool(case.optim) == bool(fx["optim_reason"])
    steps = fx["steps"]

    def check(i: int, got: dict) -> None:
        want = steps[i]
        assert got["epoch"] == want["epoch"]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12), i
        for term, value in want["terms"].items():
            mine = P.combined(got["terms"], term)
            assert mine == pytest.approx(value, rel=TS.RTOL, abs=1e-300), (i, term)
        assert sum(got["terms"].values()) == pytest.approx(want["total"], rel=TS.RTOL), i
        assert set(got["digest"]) == set(want["digest"]), i
        bad = [k for k, v in want["digest"].items()
               if not TS.digest_close(got["digest"][k], v)]
        assert not bad, (i, bad[:5])

    ran = TS.run(case, on_step=check)
    assert len(ran) == len(steps)


@pytest.mark.parametrize("key", ["resnet8@student", "resnet20@student", "vgg13@teacher"])
def test_the_stored_batchnorm_statistics_are_those_the_calibration_measures(key):
    """The stored statistics (``trajectory_setup.CALIBRATION``) are this calibration's up to
    float32 rounding, so the file holds nothing but what any CPU measures, rounded as the
    fixtures' CPU rounded it."""
    import torch

    name, role = key.split("@")
    stored = TS.stored_statistics()[key]
    measured = TS._bn_buffers(TS.measure_statistics(P.seeded_network(name, P.SEEDS[role])))
    assert len(stored) == len(measured)
    for want, got in zip(stored, measured, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)  # bit for bit on AVX2
