"""The in-memory Python API: distil (or train) networks and data you hold as Python objects.

>>> import kdlab
>>> student = kdlab.distill(student=my_net, teacher=my_trained_net, train=(x, y),
...                        val=(x_val, y_val), method="fcfd", epochs=30, lr=0.05,
...                        out="runs/my_fcfd")  # doctest: +SKIP

This is the command line's run, fed with objects: the settings become the same
:class:`~kdlab.core.config.RunConfig` (checked by the same validation), the one
:class:`~kdlab.training.trainer.Trainer` trains it, and the run folder holds the same files
(``config.yaml``, ``metrics.csv``, ``best.pt`` / ``last.pt``, ``report.md``, plots). The
objects reach the trainer through :class:`~kdlab.training.prebuilt.Prebuilt`; the config names
them ``memory:...``, so ``kdlab eval`` / ``export`` / ``--resume`` refuse the folder in one
sentence and ``kdlab.distill(..., resume=True)`` with the same objects continues it.

Networks: a module (staged with :func:`kdlab.models.build_model`: a torchvision ResNet or a
timm model as they are, any other network through :func:`kdlab.models.stage`), a
:class:`~kdlab.models.Staged` view, or a registered model name. Data: see
:mod:`kdlab.data.memory` (tensors, a Dataset or a DataLoader; uint8 or [0, 1] images).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from kdlab.core.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    build_dataclass,
    follow_epochs,
    read_yaml,
)
from kdlab.core.registry import did_you_mean
from kdlab.errors import UserError

SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                             "schedule": ScheduleConfig, "train": TrainConfig}
#: settings given as arguments of distill() rather than as keyword settings
ARGUMENTS = {"data.name": "train= and val=", "model.student": "student=",
             "model.teacher": "teacher=", "train.out_dir": "out=", "schedule.epochs": "epochs="}


# --------------------------------------------------------------------- settings
def _setting_keys(method: str) -> dict[str, list[str]]:
    """Flat setting name -> the dotted config keys it may mean."""
    from kdlab.methods import METHODS

    keys: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            keys.setdefault(f.name, []).append(f"{section}.{f.name}")
    for f in dataclasses.fields(METHODS.get(method).Config):
        keys.setdefault(f.name, []).append(f"method.{f.name}")
    keys["task_options"] = ["task_options"]
    return keys


def resolve_settings(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``{dotted config key: value}`` for keyword settings: a flat name (``lr``,
    ``batch_size``, ``temperature``) that means exactly one key, a dotted key
    (``**{"schedule.name": "cosine"}``), or ``optim=`` / ``schedule=`` naming the optimiser or
    schedule. A name that means nothing or several keys is a UserError."""
    keys = _setting_keys(method)
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if name in ("optim", "schedule") and isinstance(value, str):
            key = f"{name}.name"
        elif "." in name:
            key = name
            if name.split(".", 1)[0] not in (*SECTIONS, "method", "task_options"):
                raise UserError(f"Setting {name!r} names no config section; sections are "
                                f"{', '.join([*SECTIONS, 'method'])}.")
        else:
            found = keys.get(name)
            if found is None:
                raise UserError(f"Unknown setting {name!r}.{did_you_mean(name, list(keys))} "
                                "Settings are the config's keys (see `kdlab list` and the "
                                "method reference), e.g. lr=0.05, batch_size=64.")
            if len(found) > 1:
                raise UserError(f"Setting {name!r} could mean {' or '.join(found)}; pass the "
                                f"dotted key, e.g. **{{{found[0]!r}: {value!r}}}.")
            key = found[0]
        if key in ARGUMENTS:
            raise UserError(f"{key} is given by kdlab.distill's {ARGUMENTS[key]} argument, not "
                            "as a setting.")
        out[key] = value
    return out


def _put(tree: dict[str, Any], key: str, value: Any) -> None:
    *sections, last = key.split(".")
    node = tree
    for s in sections:
        child = node.get(s)
        if not isinstance(child, dict):
            child = node[s] = {}
        node = child
    node[last] = value


def _default_out(method: str) -> str:
    k = 1
    while Path("runs", f"{method}-{k}").exists():
        k += 1
    return str(Path("runs", f"{method}-{k}"))


# --------------------------------------------------------------------- networks
def check_networks(student: Any, teacher: Any) -> None:
    """``student`` is a network (a module or a model name), ``teacher`` one or None, and they
    are not the same network; else a UserError."""
    for role, net in (("student", student), ("teacher", teacher)):
        if (net is None and role == "student") or not (net is None or isinstance(net, str)
                                                        or isinstance(net, nn.Module)):
            raise UserError(f"{role}= must be a network: an nn.Module or a registered model name "
                            f"such as 'resnet8' (`kdlab list models`), got "
                            f"{type(net).__name__}.")
    inner = [getattr(n, "net", n) for n in (student, teacher)]
    if isinstance(student, nn.Module) and inner[0] is inner[1]:
        raise UserError("student= and teacher= are the same network, so training the student "
                        "would change the frozen teacher; pass a separate student (e.g. "
                        "copy.deepcopy(teacher)).")


def _staged(net: Any, role: str, shape: tuple[int, int, int]) -> Any:
    """A network given as a module as a staged view for images of ``shape``; a name stays."""
    if isinstance(net, str) or net is None:
        return net
    from kdlab.models import Staged, auto_stage

    staged = auto_stage(net, shape)
    if isinstance(net, Staged) and tuple(staged.input_shape) != shape:
        raise UserError(f"The {role} was staged for inputs {tuple(staged.input_shape)} but the "
                        f"images are {shape}; stage it with input_shape={shape}.")
    return staged


def _num_classes(given: int | None, nets: dict[str, Any]) -> int | None:
    """The class count: ``given``, else the networks' outputs (which must agree)."""
    counts = {role: int(n.num_classes) for role, n in nets.items()
              if n is not None and not isinstance(n, str)}
    for role, count in counts.items():
        if given is not None and count != given:
            raise UserError(f"num_classes is {given} but the {role} has {count} outputs; give "
                            "networks with one output per class.")
    if len(set(counts.values())) > 1:
        raise UserError(f"The networks disagree on the number of classes ({counts}); give a "
                        "student and a teacher with the same outputs.")
    return given if given is not None else next(iter(counts.values()), None)


# --------------------------------------------------------------------- the run
def prepare_run(
    *, student: Any, teacher: Any, train: Any, val: Any, method: str | None, out: str | None,
    epochs: int | None, recipe: str | Path | None, num_classes: int | None, resume: bool,
    default_method: str, settings: dict[str, Any],
) -> tuple[RunConfig, Any]:
    """The run's config and its :class:`~kdlab.training.prebuilt.Prebuilt` objects."""
    from kdlab.data.memory import MemoryData
    from kdlab.methods import METHODS
    from kdlab.training.prebuilt import Prebuilt, memory_name

    tree = copy.deepcopy(read_yaml(recipe)) if recipe is not None else {}
    recipe_method = tree.get("method", {})
    if isinstance(recipe_method, str):
        recipe_method = {"name": recipe_method}
    name = method or recipe_method.get("name") or default_method
    cls = METHODS.get(name)
    check_networks(student, teacher)
    tree["method"] = dict(recipe_method) if recipe_method.get("name") == name else {}
    tree["method"]["name"] = name
    if cls.needs_teacher and teacher is None:
        raise UserError(f"Method {name!r} needs a teacher: pass teacher=... (a trained "
                        "network or a model name with teacher_checkpoint=...).")
    if teacher is not None and not cls.needs_teacher:
        raise UserError(f"Method {name!r} trains without a teacher; leave teacher= out or pick "
                        "a distillation method such as method='kd'.")
    resolved = resolve_settings(name, settings)
    if out is None and resume:
        raise UserError("resume=True needs out=, the folder of the run to continue.")
    data = MemoryData(train, val)
    shape = data.shape
    s_net, t_net = _staged(student, "student", shape), _staged(teacher, "teacher", shape)
    if shape[1] != shape[2] and any(isinstance(n, str) for n in (student, teacher)):
        raise UserError(f"The images are {shape[1]}x{shape[2]}; a network given by name needs "
                        "square images: pass your own network as a module instead.")
    data.set_num_classes(_num_classes(num_classes, {"student": s_net, "teacher": t_net}))
    model = tree.get("model") if isinstance(tree.get("model"), dict) else {}
    for role, net in (("student", student), ("teacher", teacher)):  # a recipe's, not these
        if not isinstance(net, str):
            for key in (f"{role}_pretrained", f"{role}_options", f"{role}_checkpoint"):
                model.pop(key, None)
    for key, value in resolved.items():
        _put(tree, key, value)
    _put(tree, "data.name", data.name)
    _put(tree, "model.student", student if isinstance(student, str) else memory_name(student))
    _put(tree, "model.teacher", teacher if teacher is None or isinstance(teacher, str)
         else memory_name(teacher))
    _put(tree, "train.out_dir", out or _default_out(name))
    tree["data"].setdefault("augment", False)  # kdlab cannot know what suits these images
    if epochs is not None:
        _put(tree, "schedule.epochs", epochs)
        if "schedule.milestones" not in resolved:  # a recipe's are for its own epochs
            tree["schedule"].pop("milestones", None)
    for note in follow_epochs(tree).values():  # the milestones follow the epochs given
        if tree.get("train", {}).get("progress") != "none":
            print(note)
    cfg = build_dataclass(RunConfig, tree, where="config")
    d = cfg.data
    if d.normalized and (d.mean is not None or d.std is not None):
        raise UserError("data.normalized=true takes the images as they are; leave data.mean "
                        "and data.std out.")
    if not d.normalized and (d.mean is None) != (d.std is None):
        raise UserError("Give data.mean and data.std together (or neither: kdlab measures "
                        "them on the training images).")
    if not d.normalized and d.mean is None:
        d.mean, d.std = data.measure()
    prebuilt = Prebuilt(student=None if isinstance(s_net, str) else s_net,
                        teacher=None if t_net is None or isinstance(t_net, str) else t_net,
                        data=data)
    return cfg, prebuilt


def fit(*, default_method: str, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Train as :func:`distill` describes; returns the trained student and the run summary."""
    from kdlab.training.report import print_summary
    from kdlab.training.trainer import Trainer

    settings = kwargs.pop("settings")
    cfg, prebuilt = prepare_run(default_method=default_method, settings=settings, **kwargs)
    trainer = Trainer(cfg, resume=kwargs["resume"], prebuilt=prebuilt)
    summary = trainer.fit()
    if cfg.train.progress != "none":
        print_summary(summary)
    exported = trainer.run.distiller.exported()
    student = exported.get("student", next(iter(exported.values())))
    return student.eval(), summary


def distill(
    *, student: Any, train: Any, val: Any, teacher: Any = None, method: str | None = None,
    out: str | Path | None = None, epochs: int | None = None, recipe: str | Path | None = None,
    num_classes: int | None = None, resume: bool = False, **settings: Any,
) -> nn.Module:
    """Distil ``teacher`` into ``student`` on in-memory data; returns the trained student.

    Args:
        student: the network to train: an ``nn.Module`` (a torchvision ResNet or timm model
            as it is, any other network staged with :func:`kdlab.models.stage`; trained in
            place), or a registered model name such as ``"resnet8"``.
        teacher: the trained network (frozen and moved to the run's device in place), or a
            model name with ``teacher_checkpoint=...`` / ``teacher_pretrained=...``.
        train: the training split: ``(images, labels)`` tensors, a torch ``Dataset`` of
            ``(image, label)`` or a ``DataLoader`` (:mod:`kdlab.data.memory`). Images are
            uint8 (0..255) or float in [0, 1], never rescaled twice; already normalised ones
            need ``normalized=True``.
        val: the validation split, in any of the forms ``train`` accepts.
        method: a registered method (``"kd"``, ``"fcfd"``, ``"dkd"``, ...; default ``"kd"``,
            or the recipe's).
        out: the run folder (default ``runs/<method>-<n>``, the first free one).
        epochs: training epochs; with a multistep schedule the LR drops at 62.5, 75 and
            87.5 % of them (the paper's 150/180/210 of 240) unless ``milestones=`` is given
            (a recipe's milestones are replaced: they are for the recipe's epochs).
        recipe: a YAML recipe to start from (e.g. one of ``recipes/``); its data and model
            sections are replaced by the objects given here.
        num_classes: needed only when no network is a module and the data cannot tell
            (tensor labels and a Dataset's ``classes`` do).
        resume: continue the run in ``out`` (same objects and settings).
        **settings: any config key by its name when it is unique (``lr=0.05``,
            ``batch_size=128``, ``temperature=4``, ``seed=1``, ``device="cpu"``,
            ``mean=[...]``, ``std=[...]``, ``augment=True``), or dotted
            (``**{"schedule.name": "cosine"}``); ``optim="adamw"`` / ``schedule="cosine"``
            pick those.

    Returns:
        The trained student after the last epoch (the module given, or the network built
        from the name), in eval mode on the run's device; ``best.pt`` in the run folder holds
        the best epoch's weights.

    Raises:
        kdlab.errors.UserError: one sentence saying what to do, before training starts
            (nothing is left in ``out``), for every input the command line would refuse
            too: ``student`` / ``teacher`` that are not networks (or are the same one);
            empty splits; images of another shape, channel count or size in ``val`` than in
            ``train`` or than a staged network expects; labels outside
            ``0..num_classes-1``; images that are not uint8 or float in [0, 1]; an ``out``
            that is a file, lies under a file or cannot be written (read-only); a setting
            the config refuses.

    Before the first epoch the teacher is evaluated once on ``val`` and its score printed
    and stored (``metrics.csv``, ``report.md``), with a warning when it is at chance level
    (``evaluate_teacher=False`` skips it, for a teacher that is expensive to evaluate).
    """
    student_net, _ = fit(default_method="kd", student=student, teacher=teacher, train=train,
                         val=val, method=method, out=None if out is None else str(out),
                         epochs=epochs, recipe=recipe, num_classes=num_classes, resume=resume,
                         settings=settings)
    return student_net


def train(
    *, student: Any, train: Any, val: Any, method: str | None = None,
    out: str | Path | None = None, epochs: int | None = None, recipe: str | Path | None = None,
    num_classes: int | None = None, resume: bool = False, **settings: Any,
) -> nn.Module:
    """Train ``student`` alone (cross-entropy by default, or a method without a teacher) on
    in-memory data; the arguments are :func:`distill`'s. Returns the trained student."""
    student_net, _ = fit(default_method="ce", student=student, teacher=None, train=train,
                         val=val, method=method, out=None if out is None else str(out),
                         epochs=epochs, recipe=recipe, num_classes=num_classes, resume=resume,
                         settings=settings)
    return student_net
