"""Run assembly: the device, the data, the student, the teacher and the distiller of a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.core.config import RunConfig
from kdlab.errors import UserError
from kdlab.methods.base import Distiller
from kdlab.models.staged.view import Staged
from kdlab.training.prebuilt import Prebuilt, is_memory, refuse_memory


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; anything else is checked."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UserError(
            f"train.device {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device is {spec!r} but CUDA is not available here; "
                            "use train.device=auto or cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"train.device {spec!r} does not exist ({torch.cuda.device_count()} "
                            "CUDA device(s)); pick another index.")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"train.device is {spec!r} but MPS is not available here; "
                            "use train.device=auto or cpu.")
    return device


# --------------------------------------------------------------------- weights
def _read_weights(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, model spec) from a run checkpoint or a .safetensors export."""
    if not path.is_file():
        raise UserError(f"Weights file {str(path)!r} does not exist; check the path or train "
                        "that network first with `kdlab train`.")
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file, safe_open
        except ImportError:
            raise UserError("Reading .safetensors needs the safetensors package; "
                            "`pip install safetensors`.") from None
        try:
            state = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                spec = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{str(path)!r} is not a readable .safetensors file ({e}); export "
                            "it again with `kdlab export`.") from None
        if spec.get("kind") == "composite":
            raise UserError(f"{str(path)!r} is a composite {spec.get('method')} network, not a "
                            "plain model; use a plain model's export or run checkpoint here.")
        return state, spec
    from kdlab.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    exported = ckpt.get("exported")
    if not isinstance(exported, dict) or not exported:
        raise UserError(f"{str(path)!r} is not a kdlab run checkpoint (no exported networks); "
                        "give a run's best.pt / last.pt or a .safetensors export.")
    if key not in exported:
        raise UserError(f"{str(path)!r} holds no network {key!r} (it holds "
                        f"{', '.join(exported)}); give the checkpoint of the right run.")
    spec = (ckpt.get("models") or {}).get(key) or {}
    return exported[key], dict(spec)


def weights_spec(path: str | Path, *, key: str = "student") -> dict[str, Any]:
    """What a weights file says about its network: model name, num_classes, in_channels,
    input_size (those it records; values as in the file)."""
    return _read_weights(Path(path), key)[1]


def load_weights(path: str | Path, module: nn.Module, *, key: str = "student") -> None:
    """Load network ``key`` of a run checkpoint (``ckpt["exported"][key]``) or a .safetensors
    export into ``module``; a missing or corrupt file or a shape mismatch is a UserError."""
    path = Path(path)
    state, _ = _read_weights(path, key)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise UserError(f"The weights in {str(path)!r} do not fit this architecture ({detail}); "
                        "check model.teacher / model.student against the run that wrote them."
                        ) from None


# --------------------------------------------------------------------- a run
@dataclass
class Run:
    """Everything a training run is made of."""

    distiller: Distiller
    loaders: Any  # kdlab.data.Loaders
    info: Any  # kdlab.data.DatasetInfo


def check_task(cfg: RunConfig) -> None:
    """The run's ``task`` is registered and its dataset, networks and method are made for it;
    a UserError names the part that is not. Nothing is loaded."""
    from kdlab.data import describe
    from kdlab.methods import METHODS
    from kdlab.models import model_task
    from kdlab.tasks import TASKS

    TASKS.get(cfg.task)
    # data given in memory (kdlab.distill) is classification data: kdlab.data.memory
    data_task = "classification" if is_memory(cfg.data.name) else describe(cfg.data.name).task
    if data_task != cfg.task:
        raise UserError(f"Dataset {cfg.data.name!r} is a {data_task} dataset but the run's task "
                        f"is {cfg.task!r}; set task: {data_task} in the recipe or pick a "
                        f"{cfg.task} dataset.")
    m = cfg.model
    method = METHODS.get(cfg.method_name)
    teacher = m.teacher if method.needs_teacher else None
    for role, name in (("student", m.student), ("teacher", teacher)):
        if name and not is_memory(name) and model_task(name) != cfg.task:
            raise UserError(f"model.{role} {name!r} is a {model_task(name)} network but the "
                            f"run's task is {cfg.task!r}; pick a {cfg.task} network (`kdlab list "
                            "models`).")
    method.for_task(cfg.task)


def check_model_config(cfg: RunConfig, *, weights: bool = True) -> None:
    """The networks of ``cfg.model`` are registered and, with ``weights``, their starting
    weights are well given: a teacher's come from exactly one of ``teacher_checkpoint`` (an
    existing file) and ``teacher_pretrained``, and ``*_pretrained`` names only models that have
    pretrained weights. Nothing is read or downloaded; a UserError says what to fix. A
    network given in memory (``memory:...``, :mod:`kdlab.training.prebuilt`) has its weights."""
    from kdlab.methods import METHODS
    from kdlab.models import MODELS, has_pretrained, model_task, pretrained_models

    m = cfg.model
    method = METHODS.get(cfg.method_name)
    if not is_memory(m.student):
        MODELS.get(m.student)
    check_task(cfg)
    if method.needs_teacher and not m.teacher:
        raise UserError(f"Method {cfg.method_name!r} needs a teacher: set model.teacher and "
                        "either model.teacher_checkpoint (train the teacher first with `kdlab "
                        "train`) or model.teacher_pretrained.")
    teacher = m.teacher if method.needs_teacher and not is_memory(m.teacher) else None
    if teacher:
        MODELS.get(teacher)
    if not weights:
        return
    if cfg.data.teacher_cache:
        from kdlab.training.cache_source import check_teacher_cache

        check_teacher_cache(cfg)
    if teacher:
        ckpt = m.teacher_checkpoint
        if ckpt and m.teacher_pretrained:
            raise UserError("model.teacher_checkpoint and model.teacher_pretrained are both set; "
                            "keep one: a trained teacher's best.pt or the pretrained weights.")
        if not ckpt and not m.teacher_pretrained:
            raise UserError("model.teacher is set but neither model.teacher_checkpoint nor "
                            "model.teacher_pretrained is; train the teacher first with `kdlab "
                            "train ...` and point to its best.pt, or set "
                            "model.teacher_pretrained=true for torchvision's ImageNet weights.")
        if ckpt and Path(ckpt).is_dir():
            raise UserError(f"Teacher checkpoint {ckpt!r} is a folder; give the file in it, e.g. "
                            f"{str(Path(ckpt) / 'best.pt')!r}.")
        if ckpt and not Path(ckpt).is_file():
            raise UserError(f"Teacher checkpoint {ckpt!r} does not exist; train the teacher "
                            "first with `kdlab train ...` or fix model.teacher_checkpoint.")
    for role, name, pretrained in (("student", m.student, m.student_pretrained),
                                   ("teacher", m.teacher, m.teacher_pretrained)):
        given = pretrained or (role == "teacher" and m.teacher_checkpoint)
        if is_memory(name) and given:
            key = f"{role}_pretrained" if pretrained else "teacher_checkpoint"
            raise UserError(f"model.{key} is set but the {role} is a network given in memory; "
                            "load its weights into it before passing it.")
        if is_memory(name) or (role == "teacher" and not teacher):
            continue
        if name and pretrained and not has_pretrained(name):
            same_task = pretrained_models(model_task(name))
            raise UserError(f"model.{role}_pretrained is set but model.{role} {name!r} has no "
                            f"pretrained weights; use one of {', '.join(same_task)} "
                            f"or set model.{role}_pretrained=false.")
        if name and pretrained is True and getattr(MODELS.get(name), "weights_from_file_only",
                                                   False):
            raise UserError(f"model.{role}_pretrained=true would download {name}'s weights; "
                            "kdlab reads them from a local file only: set it to the path of "
                            "the .safetensors / .pth file.")


def _check_teacher_spec(cfg: RunConfig, spec: dict[str, Any], info: Any) -> None:
    """The teacher's recorded classes / input shape against the data; UserError on mismatch."""
    ckpt = cfg.model.teacher_checkpoint
    model = spec.get("model")
    if model is not None and str(model) != cfg.model.teacher:
        raise UserError(f"Teacher checkpoint {ckpt!r} holds a {model!r}, not the "
                        f"model.teacher {cfg.model.teacher!r}; set model.teacher={model}.")
    for field, want in (("num_classes", info.num_classes), ("in_channels", info.in_channels),
                        ("input_size", info.input_size)):
        if field in spec and int(spec[field]) != int(want):
            raise UserError(
                f"The teacher in {ckpt!r} was trained with {field}={int(spec[field])} but "
                f"dataset {info.name!r} has {field}={want}; use a teacher trained on this data."
            )


def _check_pretrained_teacher(teacher: nn.Module, info: Any) -> None:
    """A frozen teacher must be pretrained throughout: a tensor whose shape the pretrained file
    does not match (another class count or input channels) would stay random."""
    skipped = getattr(teacher, "kdlab_pretrained_skipped", [])
    if skipped:
        raise UserError(
            f"model.teacher_pretrained leaves {len(skipped)} teacher tensor(s) untrained "
            f"({', '.join(skipped[:3])}): their shapes differ for data with "
            f"{info.num_classes} classes and {info.in_channels} input channels; give pretrained "
            "weights for this data (torchvision's are ImageNet's: 1000 classes, 3 channels) or "
            "a trained teacher in model.teacher_checkpoint."
        )


def build_run(
    cfg: RunConfig, device: torch.device, *, rank: int = 0, world_size: int = 1,
    resuming: bool = False, prebuilt: Prebuilt | None = None,
) -> Run:
    """Loaders, student, teacher (weights loaded) and the distiller, on ``device``.

    ``resuming``: the run's checkpoint will overwrite the student, so its pretrained weights
    (``model.student_pretrained``) are not read or downloaded. ``prebuilt``: the networks and
    data the config names ``memory:...`` (:mod:`kdlab.training.prebuilt`)."""
    from kdlab.data import build_loaders
    from kdlab.data.base import train_labels

    check_model_config(cfg)  # before the data is loaded
    loaders = build_loaders(cfg.data, device, seed=cfg.train.seed, rank=rank,
                            world_size=world_size, source=prebuilt.data if prebuilt else None)
    info = loaders.info
    distiller = build_distiller_from_config(cfg, info, device, student_weights=not resuming,
                                            prebuilt=prebuilt)
    distiller.use_train_labels(train_labels(loaders.train))  # CRD's class negatives
    if loaders.teacher_cache is not None:
        from kdlab.training.cache_source import attach_teacher_cache

        attach_teacher_cache(distiller, loaders.teacher_cache, cfg.model.teacher)
    return Run(distiller=distiller, loaders=loaders, info=info)


def build_teacher(cfg: RunConfig, info: Any, *, load: bool = True) -> Staged:
    """``model.teacher`` for data shaped like ``info`` (on the CPU), with its weights from
    ``model.teacher_checkpoint`` or ``model.teacher_pretrained`` when ``load``."""
    from kdlab.models import build_model

    m = cfg.model
    assert m.teacher is not None
    shape = {"num_classes": int(info.num_classes), "in_channels": int(info.in_channels),
             "input_size": int(info.input_size)}
    teacher = build_model(m.teacher, **shape, options=m.teacher_options,
                          pretrained=m.teacher_pretrained if load else False)
    if load and m.teacher_pretrained:
        _check_pretrained_teacher(teacher.net, info)
    if load and m.teacher_checkpoint:
        _check_teacher_spec(cfg, weights_spec(m.teacher_checkpoint), info)
        load_weights(m.teacher_checkpoint, teacher.net)
    return teacher


def build_distiller_from_config(
    cfg: RunConfig, info: Any, device: torch.device | str = "cpu", *,
    architecture_only: bool = False, student_weights: bool = True,
    prebuilt: Prebuilt | None = None,
) -> Distiller:
    """The run's distiller (student, teacher, method extras) for data shaped like ``info``.

    ``info`` needs ``num_classes``, ``in_channels``, ``input_size`` and ``train_size`` (a
    :class:`kdlab.data.DatasetInfo`). The teacher's weights come from
    ``model.teacher_checkpoint`` or ``model.teacher_pretrained``, the student's from
    ``model.student_pretrained`` if set. With ``architecture_only=True`` no weights are read
    or downloaded (nor needed): for rebuilding a finished run whose own ``distiller``
    state_dict is loaded afterwards (``kdlab eval`` / ``kdlab export``); whatever a method
    copies out of the teacher is in that state_dict. ``student_weights=False`` skips the
    student's pretrained weights only (a resumed run's checkpoint replaces them).
    ``prebuilt`` holds the networks the config names ``memory:...``
    (:mod:`kdlab.training.prebuilt`); without it such a config is a UserError.
    """
    from kdlab.methods import METHODS, build_distiller
    from kdlab.models import build_model
    from kdlab.tasks import build_task

    if prebuilt is None:
        refuse_memory(cfg, "kdlab")
    else:
        prebuilt.check(cfg)
    check_model_config(cfg, weights=not architecture_only)
    m = cfg.model
    load = not architecture_only
    shape = {"num_classes": int(info.num_classes), "in_channels": int(info.in_channels),
             "input_size": int(info.input_size)}
    if prebuilt is not None and prebuilt.student is not None:
        student = prebuilt.student
    else:
        student = build_model(m.student, **shape, options=m.student_options,
                              pretrained=m.student_pretrained if load and student_weights
                              else False)
    teacher = None
    if prebuilt is not None and prebuilt.teacher is not None:
        teacher = prebuilt.teacher
    elif m.teacher and METHODS.get(cfg.method_name).needs_teacher:
        teacher = build_teacher(cfg, info, load=load)
    student.to(device)
    if teacher is not None:
        teacher.to(device)
    task = build_task(cfg.task, ignore_index=getattr(info, "ignore_index", None),
                      num_classes=int(info.num_classes), options=cfg.task_options,
                      class_names=getattr(info, "class_names", None))
    distiller = build_distiller(cfg.method_name, cfg.method_options, student, teacher,
                                train_size=info.train_size, task=task)
    distiller.to(device)
    return distiller


def restore_distiller(
    cfg: RunConfig, info: Any, state: dict[str, Any], device: torch.device | str = "cpu"
) -> Distiller:
    """A finished run's distiller: rebuilt from its config (architectures only: no teacher
    checkpoint or pretrained weights are read, see :func:`build_distiller_from_config`) with
    the checkpoint's ``distiller`` state_dict
    loaded strictly, in eval mode. Every method's evaluated and exported networks come out
    of it, composite ones (SimKD's student + projector + reused head) included."""
    distiller = build_distiller_from_config(cfg, info, device, architecture_only=True)
    try:
        distiller.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) or lines[0]
        raise UserError(
            f"The checkpoint's weights do not fit method {cfg.method_name!r} with student "
            f"{cfg.model.student!r} ({detail[:300]}); evaluate it with the run's own "
            "config.yaml and no --set of model or method keys."
        ) from None
    return distiller.eval()


def model_specs(exported: dict[str, nn.Module]) -> dict[str, dict[str, Any]]:
    """``{name: {model, num_classes, in_channels, input_size}}`` for the exported networks
    that carry the ``kdlab_spec`` :func:`kdlab.models.build_model` attaches (a composite
    network, e.g. SimKD's student + projector, has none and is left out)."""
    return {name: dict(m.kdlab_spec) for name, m in exported.items()
            if isinstance(getattr(m, "kdlab_spec", None), dict)}
