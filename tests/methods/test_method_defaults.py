"""A method's defaults are its reference code's (docs: DESIGN.md, "Parity levels"); kdlab's
own choices are opt-in settings. Each row names the value and where the reference sets it
(repository @ commit of tests/fixtures/parity, file:line)."""

from __future__ import annotations

import pytest

from kdlab.methods import METHODS

#: (method, setting) -> (the reference's value, where it comes from; kdlab's former default)
REFERENCE_DEFAULTS = {
    ("kd", "ce_weight"): (0.1, "RepDistiller scripts/run_cifar_distill.sh:5 (-r 0.1); "
                               "mdistiller mdistiller/engine/cfg.py:63; former 1.0"),
    ("kd", "kd_weight"): (0.9, "RepDistiller scripts/run_cifar_distill.sh:5 (-a 0.9); "
                               "mdistiller mdistiller/engine/cfg.py:64; former 1.0"),
    ("kd", "temperature"): (4.0, "mdistiller mdistiller/engine/cfg.py:61"),
    ("fitnet", "regressor"): ("convreg", "RepDistiller train_student.py:187 (ConvReg, "
                                         "models/util.py:131); former bridge"),
    ("fitnet", "hint_weight"): (100.0, "RepDistiller scripts/run_cifar_distill.sh:7 (-b 100)"),
    ("fcfd", "teacher_bn"): ("batch", "FCFD classification/cifar/main.py:280 "
                                      "(self.model.train() on the MetaModel); former eval"),
    ("fcfd", "bridge_init"): ("authors", "FCFD classification/models/meta.py:84 (only "
                                         "nn.Conv2d re-initialised), 184-188 (biases); "
                                         "former kaiming"),
    ("ofd", "teacher_bn"): ("batch", "mdistiller mdistiller/distillers/OFD.py:114-121 (train() "
                                     "leaves the teacher in train mode); former eval"),
    ("reviewkd", "teacher_features"): ("pre_relu", "ReviewKD CIFAR-100/train.py:222 "
                                                   "(preact=True); mdistiller mdistiller/"
                                                   "distillers/ReviewKD.py:89 (preact_feats); "
                                                   "former stage_outputs"),
    ("crd", "negatives"): ("class", "RepDistiller dataset/cifar100.py:166-167; mdistiller "
                                    "mdistiller/dataset/cifar100.py:109-111 (k samples of "
                                    "other classes, without replacement); former uniform"),
    ("skd", "pixel_reduction"): ("image", "structure_knowledge_distillation utils/criterion.py:"
                                          "225 (summed over the batch, / W / H); former pixel"),
    ("skd", "critic_optimizer"): ("sgd", "structure_knowledge_distillation networks/kd_model.py"
                                         ":75 (D_solver: SGD, momentum, weight decay); former "
                                         "adam"),
    ("skd", "spectral_norm"): ("sagan", "structure_knowledge_distillation networks/"
                                        "sagan_models.py:117 (SAGAN's SpectralNorm); former "
                                        "torch"),
}


@pytest.mark.parametrize(("method", "key"), sorted(REFERENCE_DEFAULTS))
def test_the_default_is_the_reference_codes(method, key):
    value, source = REFERENCE_DEFAULTS[method, key]
    assert getattr(METHODS.get(method).Config(), key) == value, source
