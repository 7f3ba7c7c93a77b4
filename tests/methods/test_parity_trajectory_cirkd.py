"""Step-exact parity with CIRKD: SKD and CWD as CIRKD ran them (its Cityscapes recipes'
settings, unchanged), a few of kdlab's own training steps (recipe -> Optimisation.build ->
train_step) against CIRKD's own training loop (winycg/CIRKD @ 48eb81b, ``Trainer.train``),
run on kdlab's CPU segmentation pair with the same weights and batches, in float64.

The fixtures (``tests/fixtures/parity/trajectory_cirkd/*.json``) hold, per step, CIRKD's
learning rates, its loss variables, its two totals (the student's ``losses``, the critic's
``D_losses``) and a digest of every tensor (student, critic, CWD projection), with CIRKD's
commit and the command that produced them (``benchmarks/parity/cirkd_trajectory.py``); what
the cases are is ``benchmarks/parity/cirkd_trajectory_setup.py``. kdlab must follow each
trajectory to a relative ``trajectory_setup.RTOL``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
import cirkd_trajectory_setup as CS  # noqa: E402
import trajectory_setup as TS  # noqa: E402

FIXTURES = {p.stem: json.loads(p.read_text()) for p in sorted(CS.FIXTURES.glob("*.json"))}


def test_every_case_has_a_fixture_that_names_its_sources():
    assert set(FIXTURES) == set(CS.CASES)
    for name, fx in FIXTURES.items():
        case = CS.CASES[name]
        assert fx["seeds"] == CS.SEEDS and fx["batch"] == CS.BATCH and fx["image"] == CS.IMAGE
        assert fx["networks"] == list(CS.NETWORKS) and fx["dtype"] == "float64"
        assert fx["terms"] == case.terms and fx["script"].endswith(case.script)
        assert "cirkd_trajectory.py" in fx["command"] and len(fx["steps"]) == CS.STEPS
        ref = fx["references"]["cirkd"]
        assert ref["repository"] == "github.com/winycg/CIRKD"
        assert ref["commit"] == "48eb81b7a0ed7c59f9e347e97feb95a23e943d12"


@pytest.mark.parametrize("name", sorted(CS.CASES))
def test_kdlab_follows_cirkds_trajectory(name):
    case, fx = CS.CASES[name], FIXTURES[name]
    cfg = CS.recipe(case)
    assert (cfg.method_options, cfg.task_options) == (fx["options"], fx["task_options"]), (
        f"the {case.method} recipe changed since the fixture was made: check it against "
        "CIRKD, then regenerate with benchmarks/parity/cirkd_trajectory.py")
    ref_optim = fx["reference_optim"]
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (
        ref_optim["lr"], ref_optim["momentum"], ref_optim["weight_decay"])
    assert cfg.schedule.iterations == ref_optim["max_iterations"]
    steps = fx["steps"]
    critic = [case.terms[n] for n in CS.CRITIC_TERMS]

    def check(i: int, got: dict) -> None:
        want = steps[i]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12), i
        assert got["critic_lr"] == pytest.approx(want["critic_lr"], rel=1e-12), i
        terms = got["terms"]
        assert set(terms) == {case.terms[n] for n in want["terms"]}, i
        for term, value in want["terms"].items():
            assert terms[case.terms[term]] == pytest.approx(value, rel=TS.RTOL), (i, term)
        student = sum(v for k, v in terms.items() if k not in critic)
        assert student == pytest.approx(want["total"], rel=TS.RTOL), i
        assert sum(terms[k] for k in critic) == pytest.approx(want["critic_total"],
                                                              rel=TS.RTOL), i
        assert set(got["digest"]) == set(want["digest"]), i
        bad = [k for k, v in want["digest"].items()
               if not TS.digest_close(got["digest"][k], v)]
        assert not bad, (i, bad[:5])

    assert len(CS.run(case, on_step=check)) == len(steps)
