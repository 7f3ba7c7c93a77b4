"""Teacher sources (issue 24): a teacher cache stands in only for a method that reads the
teacher's logits, on classification; it refuses any other read in one sentence, so no
method can run the teacher behind its back; segmentation KD (PixelKD) refuses the cache."""

from __future__ import annotations

import pytest
import torch

from kdlab.core.config import RunConfig, build_dataclass
from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.base import Batch
from kdlab.methods.kd.segmentation import PixelKD
from kdlab.methods.teacher_source import TeacherLogits
from kdlab.training.build import check_model_config
from kdlab.training.cache_source import CacheSource, check_cache_use


class StoredLogits:
    """A stand-in for a CachedTeacher: fixed logits per dataset index."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.stored = logits

    def logits(self, index: torch.Tensor) -> torch.Tensor:
        return self.stored[index]


def _counted(teacher: torch.nn.Module) -> list[int]:
    calls = [0]
    for m in teacher.modules():
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_kd_reads_its_teacher_from_the_cache_and_the_teacher_does_not_run(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("kd", {}, student, teacher)
    stored = torch.randn(8, 10)
    calls = _counted(teacher)
    d.use_teacher_source(CacheSource(StoredLogits(stored)))
    x, y, index = torch.randn(4, 3, 16, 16), torch.arange(4), torch.tensor([7, 0, 3, 5])
    _, terms = d(x, y, index)
    assert calls == [0]
    want = d.losses(Batch(x, y, index), student.features(x), TeacherLogits(stored[index]))
    torch.testing.assert_close(terms["kd"], want["kd"])


@pytest.mark.parametrize("name", ["fitnet", "ofd", "srrl"])
def test_a_feature_method_given_a_cache_refuses_in_one_sentence(tiny_pair, name):
    teacher, student = tiny_pair
    d = build_distiller(name, {}, student, teacher)
    calls = _counted(teacher)
    d.use_teacher_source(CacheSource(StoredLogits(torch.randn(8, 10))))
    with pytest.raises(UserError, match="holds the teacher's logits only") as err:
        d(torch.randn(4, 3, 16, 16), torch.arange(4), torch.arange(4))
    assert "\n" not in str(err.value)
    assert calls == [0]


def test_pixel_kd_refuses_a_teacher_cache():
    assert METHODS.get("kd").for_task("segmentation") is PixelKD
    assert PixelKD.teacher_reads == "logits"  # it reads score maps, which no cache stores
    with pytest.raises(UserError, match="segmentation run's teacher does not give") as err:
        check_cache_use(PixelKD, PixelKD.Config(), "segmentation")
    assert "\n" not in str(err.value)


def test_a_segmentation_kd_run_with_a_teacher_cache_is_refused_before_anything_loads(tmp_path):
    cfg = build_dataclass(RunConfig, {
        "task": "segmentation",
        "data": {"name": "scenes_seg", "teacher_cache": str(tmp_path / "none.kdcache")},
        "model": {"student": "seg_resnet8", "teacher": "seg_resnet20",
                  "teacher_checkpoint": str(tmp_path / "teacher.pt")},
        "method": {"name": "kd"},
        "train": {"device": "cpu", "out_dir": str(tmp_path / "run")},
    }, where="config")
    with pytest.raises(UserError, match="data.teacher_cache holds one vector of class logits"):
        check_model_config(cfg)


def test_a_method_without_a_frozen_teacher_takes_no_source(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("ce", {}, student, None)
    assert d.teacher_source is None
    with pytest.raises(UserError, match="no frozen teacher"):
        d.use_teacher_source(CacheSource(StoredLogits(torch.randn(8, 10))))
