"""The case of the Detectron2 weight-file parity fixture, shared by its generator
(``detectron2_weights_fixture.py``, which runs Detectron2) and its test
(``tests/tasks/detection/test_detectron2_parity.py``, which does not): the seeded weights, the
image, the fixed boxes, the configuration and the digest of a tensor. The rules are stated in
the generator's doc."""

from __future__ import annotations

import numpy as np

SEED = 20
MSRA_SEED = 21
IMAGE_SIZE = (64, 96)
NUM_CLASSES = 3
#: fixed boxes (x1, y1, x2, y2) for the box head: from 8 to 96 px, so that FPN Eq. 1 assigns
#: them to every pooled level, some over the border
FIXED_BOXES = [[2.0, 3.0, 10.0, 11.0], [10.5, 4.25, 30.0, 20.0], [0.0, 0.0, 40.0, 30.0],
               [20.0, 10.0, 80.0, 60.0], [5.0, 5.0, 95.0, 63.0], [40.0, 20.0, 56.5, 28.0],
               [-4.0, -2.0, 30.0, 70.0], [60.0, 30.0, 96.0, 64.0]]
CONFIG = {"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
          "MODEL.RESNETS.STRIDE_IN_1X1": True, "MODEL.FPN.OUT_CHANNELS": 16,
          "MODEL.ROI_BOX_HEAD.FC_DIM": 32, "MODEL.ROI_HEADS.NUM_CLASSES": NUM_CLASSES,
          "MODEL.MASK_ON": False, "MODEL.DEVICE": "cpu"}


#: weights divided down (see :func:`_damping`): the stem reads 0..255 pixels minus the mean,
#: and the prediction layers decide the boxes
STEM = ("stem.conv1.weight", "conv1_w")
PREDICTIONS = ("objectness_logits.weight", "anchor_deltas.weight", "cls_score.weight",
               "bbox_pred.weight")


def _damping(name: str) -> float:
    """128 for the stem convolution (its input, pixels minus the mean, is of order 100), 10 for
    the four prediction layers (so that proposals and detections are boxes of varied sizes
    rather than all clipped to the image), 1 otherwise."""
    return 128.0 if name.endswith(STEM) else 10.0 if name.endswith(PREDICTIONS) else 1.0


def draw_weights(shapes: dict[str, list[int]], seed: int) -> dict[str, np.ndarray]:
    """The fixture's weights for ``shapes`` (name -> shape) by the rule of the module doc."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith(("norm.weight", "norm.running_var", "bn_s")):
            out[name] = 0.5 + rng.random(shape)
        elif len(shape) >= 2:
            out[name] = rng.standard_normal(shape) * np.sqrt(1.0 / np.prod(shape[1:])) \
                / _damping(name)
        else:
            out[name] = rng.standard_normal(shape) * 0.1
    return out


def draw_image(seed: int) -> np.ndarray:
    """The RGB image ``(3, H, W)``, float64 integer values 0..255."""
    return np.random.default_rng(seed).integers(0, 256, (3, *IMAGE_SIZE)).astype(np.float64)


def digest(x) -> dict:
    """A tensor as its shape and values (up to 512), or shape, 256 strided values, sums."""
    a = np.asarray(x.detach().double().numpy() if hasattr(x, "detach") else x, np.float64)
    flat = a.reshape(-1)
    if flat.size <= 512:
        return {"shape": list(a.shape), "values": flat.tolist()}
    idx = np.linspace(0, flat.size - 1, 256).round().astype(np.int64)
    return {"shape": list(a.shape), "index": idx.tolist(), "values": flat[idx].tolist(),
            "sum": float(flat.sum()), "abs_sum": float(np.abs(flat).sum())}


def c2_blob_name(d2_name: str) -> str:
    """The MSRA Caffe2 blob name of a Detectron2 bottom-up ResNet name (the inverse of
    Detectron2's ``convert_basic_c2_names`` on these names)."""
    parts = d2_name.split(".")
    param = {"weight": "w", "bias": "b"}[parts[-1]]
    if parts[0] == "stem":
        return "res_conv1_bn_" + {"w": "s", "b": "b"}[param] if "norm" in parts else "conv1_w"
    stage, block, conv = parts[0], parts[1], parts[2]
    branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b",
              "conv3": "branch2c"}[conv]
    suffix = ("bn_" + {"w": "s", "b": "b"}[param]) if "norm" in parts else param
    return f"{stage}_{block}_{branch}_{suffix}"
