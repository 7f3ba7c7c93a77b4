"""Step-exact parity of FCFD for detection: kdlab's own training steps (its COCO recipe's
settings -> Optimisation.build -> train_step) against the FCFD authors' detection distiller
(their ``RCNNKD.forward``, FCFD branch) stepped by Detectron2 v0.6's ``SimpleTrainer``,
optimiser and warm-up schedule, on kdlab's tiny detector pair with the same weights, batches
and sampler draws, in float64.

The fixture (``tests/fixtures/parity/trajectory_detection/*.json``) holds, per step, the
reference's learning rate, its loss dict (the seven FCFD terms and the detector's losses),
their sum and a digest of every tensor (student, bridges), with the commits of FCFD and
Detectron2 and the command that produced it
(``benchmarks/parity/fcfd_detection_trajectory.py``); the case is
``benchmarks/parity/fcfd_detection_trajectory_setup.py``. kdlab must follow the trajectory to
a relative ``trajectory_setup.RTOL``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
import fcfd_detection_trajectory_setup as DS  # noqa: E402
import parity_setup as P  # noqa: E402
import trajectory_setup as TS  # noqa: E402

FIXTURE = json.loads((DS.FIXTURES / f"{DS.NAME}.json").read_text())


def test_the_fixture_names_its_sources_and_the_settings_it_ran():
    fx = FIXTURE
    assert fx["seeds"] == DS.SEEDS and fx["batch"] == DS.BATCH and fx["size"] == DS.SIZE
    assert fx["networks"] == list(DS.NETWORKS) and fx["dtype"] == "float64"
    assert fx["terms"] == DS.TERMS and len(fx["steps"]) == DS.STEPS
    assert "fcfd_detection_trajectory.py" in fx["command"]
    refs = fx["references"]
    assert refs["fcfd"] == {"repository": "github.com/LiuDongyang6/FCFD",
                            "commit": "2aefb7bc74ed81185c13e3fee350d36a9db8d250"}
    assert refs["detectron2"] == {"repository": "github.com/facebookresearch/detectron2",
                                  "commit": "d1e04565d3bec8719335b88be9e9b961bf3ec464"}


def test_the_recipe_is_the_authors_solver_and_weights():
    cfg, solver, kd = DS.recipe(), FIXTURE["solver"], FIXTURE["kd"]
    assert cfg.method_options == FIXTURE["options"], (
        "the FCFD COCO recipe changed since the fixture was made: check it against the "
        "authors' config, then regenerate with benchmarks/parity/fcfd_detection_trajectory.py")
    o, s = cfg.optim, cfg.schedule
    assert (o.lr, o.momentum, o.nesterov, o.weight_decay, o.weight_decay_norm) == (
        solver["base_lr"], solver["momentum"], solver["nesterov"], solver["weight_decay"],
        solver["weight_decay_norm"])
    assert (s.name, s.iterations, list(s.milestones), s.gamma) == (
        "multistep", solver["max_iter"], solver["steps"], solver["gamma"])
    assert (s.warmup_iters, s.warmup_factor, solver["warmup_method"]) == (
        solver["warmup_iters"], solver["warmup_factor"], "linear")
    m = cfg.method_options
    assert m["temperature"] == kd["T"] and m["app_weight"] == kd["APP_WEIGHT"]
    assert m["kd_weight"] == m["func_kl_weight"] == m["funcp_kl_weight"] == kd["KD_WEIGHT"]
    assert m["kd_l2_weight"] == m["func_l2_weight"] == m["funcp_l2_weight"] == kd[
        "ROIL2_WEIGHT"]


def test_kdlab_follows_the_authors_trajectory():
    steps = FIXTURE["steps"]

    def check(i: int, got: dict) -> None:
        want = steps[i]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12), i
        assert set(got["terms"]) == set(DS.TERMS.values()), i
        for term, ours in DS.TERMS.items():
            value = P.combined(want["terms"], term)
            assert got["terms"][ours] == pytest.approx(value, rel=TS.RTOL), (i, term)
        assert sum(got["terms"].values()) == pytest.approx(want["total"], rel=TS.RTOL), i
        assert set(got["digest"]) == set(want["digest"]), i
        bad = [k for k, v in want["digest"].items()
               if not TS.digest_close(got["digest"][k], v)]
        assert not bad, (i, bad[:5])

    assert len(DS.run(on_step=check)) == len(steps)
