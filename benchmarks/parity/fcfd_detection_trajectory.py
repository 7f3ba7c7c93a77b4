"""Write the FCFD-for-detection trajectory (step-exact) fixture: a few training steps of the FCFD
authors' detection distiller (their ``RCNNKD.forward``, FCFD branch) driven by Detectron2
v0.6's own trainer step, optimiser and LR schedule, on kdlab's tiny detector pair, weights,
batches and sampler draws, in float64 (``tests/methods/test_parity_trajectory_fcfd_detection.py``;
the case is ``fcfd_detection_trajectory_setup.py``'s).

Usage (checkouts of LiuDongyang6/FCFD at ``2aefb7bc74ed81185c13e3fee350d36a9db8d250``,
facebookresearch/detectron2 at tag v0.6 = ``d1e04565d3bec8719335b88be9e9b961bf3ec464`` and
the fvcore sources, version ``0.1.5.post20221221`` from PyPI, whose ``param_scheduler``
Detectron2's LR schedule is built on; the fixture records the commits read from each
checkout's git or ``COMMIT`` file, and fvcore's version)::

    PYTHONPATH=src python benchmarks/parity/fcfd_detection_trajectory.py \
        --fcfd <FCFD checkout> --detectron2 <detectron2 v0.6 checkout> \
        --fvcore <fvcore sources> [--out tests/fixtures/parity/trajectory_detection]

What runs, unchanged: the authors' ``detection/model/rcnn.py`` (``RCNNKD.__init__`` and the
training branch of ``forward``: both networks' FPNs, ``loss_app`` over every level, the four
ROI-head passes of ``forward_pure_roi_head`` on the student's sampled proposals,
``rcnn_kd_loss`` for ``s``, ``st``, ``ts``), their ``model/teacher/teacher.py`` (``Teacher``,
``build_teacher``: the teacher's parameters frozen) and ``model/config.py``
(``add_distillation_cfg``); Detectron2's ``config/defaults.py`` (the solver defaults),
``solver/build.py`` (``build_optimizer``: SGD with per-parameter groups, weight decay 0 on
norm layers; ``build_lr_scheduler``: multistep with the linear warm-up, via
``solver/lr_scheduler.py``) and ``engine/train_loop.py`` (``SimpleTrainer.run_step``: the
loss dict summed, ``zero_grad``, ``backward``, ``step``), followed by ``scheduler.step()`` as
its ``LRScheduler`` hook does (``engine/hooks.py:355-358``). The configuration is
Detectron2's defaults, the authors' ``add_distillation_cfg``, then their
``configs/Base-Distillation.yaml`` and ``configs/FCFD-R18-R101.yaml`` merged in.

What kdlab provides (the networks are not the authors' Detectron2 ResNets): the detector
parts ``RCNNKD`` calls (``backbone``, ``proposal_generator``, ``roi_heads``, and the
teacher's) are adapters around copies of kdlab's tiny detectors in Detectron2's interfaces
(:class:`Backbone`, :class:`RPN`, :class:`ROIHeads`): the RPN and the ROI head's proposal
sampling and losses are torchvision's, exactly as kdlab's ``Detector.features`` runs them;
the box predictor answers Detectron2's layout (class-specific deltas for the K object classes
only: torchvision's background columns dropped). The bridges are the authors' structure
(``model/FCFD.py``: per FPN level a 3x3 conv without bias and a BatchNorm, each way) at the
tiny FPNs' 64 channels (their ``build_bridges`` hard-codes 256), holding kdlab's weights. The
teacher's BatchNorm layers stay in eval mode whatever the module's mode (the authors' teachers
are FrozenBatchNorm networks). Pixel mean 0 and std 1 (kdlab's loaders normalise), the
images' format the same for both networks. AMP off: float64.

Shims, all undone afterwards: stand-ins for the Detectron2 modules these files import but do
not need here (``detectron2.config.configurable`` as the identity, ``CfgNode`` as an
attribute dict, the registries, logging, events, ``comm``, ``ImageList`` stacking
equal-sized images, ``Instances`` carrying kdlab's targets); ``SimpleTrainer._write_metrics``
(logging) records the loss dict instead.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cirkd_trajectory as C  # noqa: E402
import fcfd_detection_trajectory_setup as DS  # noqa: E402
import generate as G  # noqa: E402
import parity_setup as P  # noqa: E402
import trajectory as T  # noqa: E402
import trajectory_setup as TS  # noqa: E402

from kdlab.tasks.detection.models.detector import _training_targets, roi_lens  # noqa: E402

REPOS = {"fcfd": "github.com/LiuDongyang6/FCFD",
         "detectron2": "github.com/facebookresearch/detectron2"}
COMMAND = ("python benchmarks/parity/fcfd_detection_trajectory.py --fcfd <FCFD checkout> "
           "--detectron2 <detectron2 v0.6 checkout> --fvcore <fvcore 0.1.5.post20221221>")
Getter = Callable[[], Tensor]


# --------------------------------------------------------------------- Detectron2 interfaces
class ImageList:
    """Detectron2's ``ImageList`` for a batch of equal-sized images (no padding needed)."""

    def __init__(self, tensor: Tensor, image_sizes: list[tuple[int, int]]) -> None:
        self.tensor, self.image_sizes = tensor, image_sizes

    @staticmethod
    def from_tensors(tensors: list[Tensor], size_divisibility: int = 0) -> ImageList:
        if len({t.shape for t in tensors}) != 1 or any(
                s % max(size_divisibility, 1) for s in tensors[0].shape[-2:]):
            raise SystemExit("the stand-in ImageList takes equal, already padded images")
        return ImageList(torch.stack(tensors), [tuple(t.shape[-2:]) for t in tensors])


class Instances:
    """A ground-truth ``Instances``: kdlab's target dict as its detectors train on it."""

    def __init__(self, target: dict[str, Tensor]) -> None:
        self.target = _training_targets([target])[0]

    def to(self, device: Any) -> Instances:
        return self


class Backbone(nn.Module):
    """A kdlab detector's backbone + FPN as a Detectron2 backbone (a dict of levels).

    The student's first runs the images through its detector's ``GeneralizedRCNNTransform``
    as kdlab's ``Detector.features`` does: the identity here (64-pixel images at a 64-pixel
    size, mean 0, std 1, no padding), but in training it draws each image's size from the
    global generator, so the samplers after it draw what kdlab's draw."""

    size_divisibility = 32

    def __init__(self, backbone: nn.Module, transform: nn.Module | None = None,
                 frozen: bool = False) -> None:
        super().__init__()
        self.body, self.transform, self.frozen = backbone, transform, frozen

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if self.transform is not None:
            images, _ = self.transform(list(x))
            if not torch.equal(images.tensors, x):
                raise SystemExit("the detector's transform is not the identity here")
        return self.body(x)

    def output_shape(self) -> None:
        return None

    def train(self, mode: bool = True) -> Backbone:
        """A teacher's stays in eval mode (the authors' FrozenBatchNorm2d teachers)."""
        return super().train(mode and not self.frozen)


class RPN(nn.Module):
    """A kdlab detector's (torchvision's) RPN as Detectron2's proposal generator."""

    def __init__(self, rpn: nn.Module) -> None:
        super().__init__()
        self.rpn = rpn

    def forward(self, images: ImageList, features: dict[str, Tensor],
                gt: list[Instances]) -> tuple[list[Tensor], dict[str, Tensor]]:
        return self.rpn(TVImageList(images.tensor, images.image_sizes), features,
                        [g.target for g in gt])


class ROIHeads(nn.Module):
    """A kdlab detector's (torchvision's) ROI head as Detectron2's ``StandardROIHeads``:
    training samples and losses in ``forward``; ``box_in_features``, ``box_pooler``,
    ``box_head`` and ``box_predictor`` for the authors' ``forward_pure_roi_head``."""

    def __init__(self, roi_heads: nn.Module, levels: list[str]) -> None:
        super().__init__()
        self.roi, self.box_in_features = roi_heads, levels
        self.box_head = roi_heads.box_head
        self.image_sizes = [(DS.SIZE, DS.SIZE)] * DS.BATCH  # every batch's (no resize)

    def forward(self, images: ImageList, features: dict[str, Tensor], proposals: list[Tensor],
                gt: list[Instances]) -> tuple[list[Any], dict[str, Tensor]]:
        if list(images.image_sizes) != self.image_sizes:
            raise SystemExit("the batch is not of the case's image size")
        sampled, _, labels, targets = self.roi.select_training_samples(
            proposals, [g.target for g in gt])
        logits, deltas = roi_lens(self.roi, features, sampled, self.image_sizes)
        loss_cls, loss_box = fastrcnn_loss(logits, deltas, labels, targets)
        boxes = [types.SimpleNamespace(proposal_boxes=p) for p in sampled]
        return boxes, {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

    def box_pooler(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        named = dict(zip(self.box_in_features, features, strict=True))
        return self.roi.box_roi_pool(named, boxes, self.image_sizes)

    def box_predictor(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, deltas = self.roi.box_predictor(x)
        return logits, deltas[:, 4:]  # Detectron2's K x 4 class-specific deltas


def authors_bridges(width: int, levels: int) -> nn.ModuleDict:
    """The authors' bridge structure (``model/FCFD.py``) at ``width`` channels."""
    def one() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
    return nn.ModuleDict({k: nn.ModuleList([one() for _ in range(levels)])
                          for k in ("s2t", "t2s")})


# --------------------------------------------------------------------- imports
def _package(name: str, path: Path | None = None, **attrs: Any) -> types.ModuleType:
    m = types.ModuleType(name)
    if path is not None:
        m.__path__ = [str(path)]
    m.__dict__.update(attrs)
    sys.modules[name] = m
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, m)
    return m


def none(*_a: Any, **_k: Any) -> None:
    """A stand-in for a function whose result is not used here."""


def _register(*_a: Any, **_k: Any) -> Callable[[Any], Any]:
    return lambda obj: obj


def stub_detectron2(d2: Path, builders: dict[str, Any]) -> None:
    """Detectron2's package skeleton: its real ``config`` defaults, ``solver`` and
    ``engine/train_loop`` files load from ``d2``; the rest are stand-ins."""
    _package("detectron2", d2)
    _package("detectron2.config", d2 / "config", CfgNode=T.AttrDict,
             configurable=lambda f=None, **k: f if f is not None else (lambda g: g))
    _package("detectron2.config.config", CfgNode=T.AttrDict)
    _package("detectron2.solver", d2 / "solver")
    _package("detectron2.engine", d2 / "engine")
    _package("detectron2.data")
    _package("detectron2.data.detection_utils", convert_image_to_rgb=none)
    _package("detectron2.structures", ImageList=ImageList, Instances=Instances)
    _package("detectron2.utils")
    _package("detectron2.utils.comm")
    _package("detectron2.utils.events", EventStorage=object, get_event_storage=none)
    _package("detectron2.utils.logger", log_first_n=none, _log_api_usage=none)
    _package("detectron2.checkpoint", DetectionCheckpointer=object)
    _package("detectron2.modeling")
    _package("detectron2.modeling.backbone", Backbone=nn.Module,
             build_backbone=builders["backbone"])
    _package("detectron2.modeling.postprocessing", detector_postprocess=none)
    _package("detectron2.modeling.proposal_generator",
             build_proposal_generator=builders["proposal_generator"])
    _package("detectron2.modeling.roi_heads", build_roi_heads=builders["roi_heads"])
    _package("detectron2.modeling.meta_arch")
    _package("detectron2.modeling.meta_arch.build",
             META_ARCH_REGISTRY=types.SimpleNamespace(register=_register))


def load_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def references(paths: dict[str, Path], builders: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The reference modules, imported with the stand-ins; everything forgotten after."""
    with T.isolated():
        sys.path.insert(0, str(paths["fvcore"]))
        stub_detectron2(paths["detectron2"] / "detectron2", builders)
        _package("fcfd_model", paths["fcfd"] / "detection" / "model")
        yield {
            "defaults": importlib.import_module("detectron2.config.defaults"),
            "solver": importlib.import_module("detectron2.solver.build"),
            "train_loop": load_file(paths["detectron2"] / "detectron2" / "engine"
                                    / "train_loop.py", "detectron2.engine.train_loop"),
            "config": importlib.import_module("fcfd_model.config"),
            "teacher": importlib.import_module("fcfd_model.teacher"),
            "rcnn": importlib.import_module("fcfd_model.rcnn"),
        }


def authors_cfg(mods: dict[str, Any], fcfd: Path) -> T.AttrDict:
    """Detectron2's defaults + ``add_distillation_cfg`` + the R18-R101 config files."""
    cfg = mods["defaults"]._C
    mods["config"].add_distillation_cfg(cfg)
    configs = fcfd / "detection" / "configs"
    for name in ("Base-Distillation.yaml", "FCFD-R18-R101.yaml"):
        tree = yaml.safe_load((configs / name).read_text())
        tree.pop("_BASE_", None)
        T.merged(cfg, _attr(tree))
    return cfg


def _attr(tree: Any) -> Any:
    if isinstance(tree, dict):
        return T.AttrDict({k: _attr(v) for k, v in tree.items()})
    return tree


# --------------------------------------------------------------------- the reference run
def reference(paths: dict[str, Path]) -> dict[str, Any]:
    """The authors' trajectory and the solver settings it ran with."""
    teacher, student = DS.networks()
    d = DS.build(teacher, student)
    s, t = copy.deepcopy(d.student), copy.deepcopy(d.teacher)
    levels = d.student.roi_levels
    builders = {"backbone": lambda cfg: Backbone(t.net.backbone, frozen=True),
                "proposal_generator": lambda cfg, shape: RPN(t.net.rpn),
                "roi_heads": lambda cfg, shape: ROIHeads(t.net.roi_heads, levels)}
    with references(paths, builders) as mods:
        cfg = authors_cfg(mods, paths["fcfd"])
        zero, one = (0.0,) * DS.CHANNELS, (1.0,) * DS.CHANNELS
        model = mods["rcnn"].RCNNKD(
            backbone=Backbone(s.net.backbone, s.net.transform),
            proposal_generator=RPN(s.net.rpn),
            roi_heads=ROIHeads(s.net.roi_heads, levels), pixel_mean=zero, pixel_std=one,
            teacher_pixel_mean=zero, teacher_pixel_std=one,
            teacher=mods["teacher"].build_teacher(cfg), kd_args=cfg.KD,
            input_format=cfg.INPUT.FORMAT, teacher_input_format=cfg.INPUT.FORMAT)
        model.bridges = authors_bridges(d.student.fpn_channels, len(d.student.fpn_levels))
        model.double()
        links = link_all(d, s, t, model)
        optimizer = mods["solver"].build_optimizer(cfg, model)
        scheduler = mods["solver"].build_lr_scheduler(cfg, optimizer)
        steps = run_steps(mods, model, optimizer, scheduler, links)
        solver = {k.lower(): cfg.SOLVER[k] for k in (
            "BASE_LR", "MOMENTUM", "NESTEROV", "WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "MAX_ITER",
            "STEPS", "GAMMA", "WARMUP_ITERS", "WARMUP_FACTOR", "WARMUP_METHOD")}
        solver["steps"] = list(solver["steps"])
        kd = {k: cfg.KD.FCFD[k] for k in ("T", "APP_WEIGHT", "KD_WEIGHT", "ROIL2_WEIGHT")}
    return {"steps": steps, "solver": solver, "kd": kd}


def link_all(d: Any, s: nn.Module, t: nn.Module, model: nn.Module) -> dict[str, Getter]:
    """kdlab's state_dict names -> the reference's copies (weights copied into the bridges)."""
    links = T.link("student.", d.student, s)
    if any(k.startswith("teacher.") for k in d.state_dict()):
        links |= T.link("teacher.", d.teacher, t)
    for i, level in enumerate(d.student.fpn_levels):
        for kind, ours in (("s2t", d.b_st), ("t2s", d.b_ts)):
            if level in ours:
                links |= T.copied(T.prefix_of(d, ours[level]), ours[level],
                                  model.bridges[kind][i])
    names = set(TS.unique_state(d))
    if set(links) != names:
        raise SystemExit(f"unlinked tensors {sorted(names ^ set(links))[:6]}")
    return links


def run_steps(mods: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: Any, links: dict[str, Getter]) -> list[dict[str, Any]]:
    """Detectron2's ``SimpleTrainer.run_step`` then ``scheduler.step()``, per step."""
    batches = []
    for i in range(DS.STEPS):
        x, targets = DS.step_batch(i)
        batches.append([{"image": x[b], "instances": Instances(targets[b])}
                        for b in range(DS.BATCH)])
    trainer = mods["train_loop"].SimpleTrainer(model, batches, optimizer)
    start = {k: get().detach().clone() for k, get in links.items()}
    steps: list[dict[str, Any]] = []

    def write_metrics(loss_dict: dict[str, Tensor], *_a: Any, **_k: Any) -> None:
        steps.append({"lr": optimizer.param_groups[0]["lr"],
                      "terms": {k: float(v.detach()) for k, v in loss_dict.items()}})

    trainer._write_metrics = write_metrics
    for i in range(DS.STEPS):
        torch.manual_seed(DS.SEEDS["draws"] + i)
        trainer.run_step()
        scheduler.step()
        now = {k: get() for k, get in links.items()}
        steps[-1]["total"] = sum(steps[-1]["terms"].values())
        steps[-1]["digest"] = TS.digest(now, start)
    return steps


# --------------------------------------------------------------------- comparison
def compare(ref: list[dict[str, Any]]) -> dict[str, float]:
    """kdlab's run against the reference's; SystemExit beyond ``trajectory_setup.RTOL``."""
    worst = {"terms": 0.0, "weights": 0.0}
    for i, (mine, theirs) in enumerate(zip(DS.run(), ref, strict=True)):
        if abs(mine["lr"] - theirs["lr"]) > 1e-12 * theirs["lr"]:
            raise SystemExit(f"step {i}: LR {mine['lr']} vs {theirs['lr']}")
        for term, ours in DS.TERMS.items():
            want = P.combined(theirs["terms"], term)
            worst["terms"] = max(worst["terms"], abs(mine["terms"][ours] - want) / abs(want))
        total = sum(mine["terms"].values())
        worst["terms"] = max(worst["terms"], abs(total - theirs["total"]) / abs(theirs["total"]))
        if set(mine["digest"]) != set(theirs["digest"]):
            raise SystemExit("digests differ in names "
                             f"{sorted(set(mine['digest']) ^ set(theirs['digest']))[:6]}")
        for k, want in theirs["digest"].items():
            worst["weights"] = max(worst["weights"], TS.digest_error(mine["digest"][k], want))
    print(f"{DS.NAME}: max relative difference terms {worst['terms']:.1e}, weights "
          f"{worst['weights']:.1e}", flush=True)
    if max(worst.values()) > TS.RTOL:
        raise SystemExit(f"{DS.NAME} is not step-exact")
    return worst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key in ("fcfd", "detectron2", "fvcore"):
        ap.add_argument(f"--{key}", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=DS.FIXTURES)
    args = ap.parse_args(argv)
    paths = {k: getattr(args, k) for k in ("fcfd", "detectron2", "fvcore")}
    ref = reference(paths)
    worst = compare(ref["steps"])
    cfg = DS.recipe()
    fvcore = (paths["fvcore"] / "fvcore" / "__init__.py").read_text()
    fixture = {
        "case": DS.NAME, "recipe": DS.RECIPE.relative_to(P.ROOT).as_posix(),
        "networks": list(DS.NETWORKS), "batch": DS.BATCH, "size": DS.SIZE,
        "seeds": DS.SEEDS, "dtype": "float64", "options": cfg.method_options,
        "solver": ref["solver"], "kd": ref["kd"], "terms": DS.TERMS,
        "references": {k: {"repository": REPOS[k], "commit": G.commit_of(paths[k])}
                       for k in ("fcfd", "detectron2")},
        "fvcore": fvcore.split('__version__ = "')[1].split('"')[0],
        "command": COMMAND, "max_relative_difference": worst, "steps": ref["steps"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{DS.NAME}.json"
    path.write_text(C.dumps(fixture))
    print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
