"""Run configuration: dataclasses, YAML recipes and dotted overrides.

A run is a YAML recipe plus ``--set key.sub=value`` overrides. Every key is checked against
the dataclasses below (and a method's own ``Config``); an unknown key or a value of the
wrong type is a :class:`~kdlab.errors.UserError` naming the key and the closest known keys.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kdlab.core.recipe_yaml import (
    DuplicateKeyError,
    load_yaml,
    read_stdin,
    read_text,
    yaml_problem,
)
from kdlab.core.registry import did_you_mean
from kdlab.core.settings import setting
from kdlab.errors import UserError

T = TypeVar("T")


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: str | None = None  # dataset folder; None = the dataset's default places
    download: bool = True  # let torchvision download when the data is not found locally
    batch_size: int = setting(64, range=">= 1")
    eval_batch_size: int = setting(512, range=">= 1")
    # for datasets read from disk; device-resident sets need none
    num_workers: int = setting(2, range=">= 0")
    device_resident: bool | None = None  # None = automatic (small sets live on the device)
    augment: bool = True
    # use only the first N training images (quick runs)
    train_subset: int | None = setting(None, range=">= 1")
    val_subset: int | None = setting(None, range=">= 1")
    # a teacher soft-label cache (`kdlab cache-teacher`): logit-only methods read the teacher's
    # outputs on stored augmented views from it instead of running the teacher
    teacher_cache: str | None = None
    # Fashion-MNIST scenes (scenes_seg / scenes_det): canvas side and scenes per split
    canvas: int = setting(64, range=">= 28")  # items are 28x28
    scenes_train: int = setting(10000, range=">= 1")
    scenes_val: int = setting(2000, range=">= 1")
    # in-memory data only (kdlab.distill): per-channel normalisation on the [0, 1] scale
    # (null: measured on the training images), or images that are already normalised
    mean: list[float] | None = setting(None, range="[0, 1]")
    std: list[float] | None = setting(None, range="> 0")
    normalized: bool = False
    # segmentation and detection folders (VOC, Cityscapes, ADE20K, COCO): the network's input
    # (detectors that normalise themselves, Detectron2-style: [0, 0, 0] / [1, 1, 1]), null = the
    # dataset's (RGB, ImageNet mean / std). channel_order bgr reverses the channels (caffe- and
    # OpenCV-style networks); pixel_mean / pixel_std per channel in that order on the 0..255
    # scale, e.g. CIRKD's bgr, [104.00698793, 116.66876762, 122.67891434], [1, 1, 1]
    channel_order: str = setting("rgb", choices=("rgb", "bgr"))
    pixel_mean: list[float] | None = setting(None, range="[0, 255]")
    pixel_std: list[float] | None = setting(None, range="> 0")
    # segmentation folders: training scale factors of the whole image, one drawn uniformly per
    # image (e.g. CIRKD's 0.5, 0.6, ..., 2.0), padded at the bottom / right to the crop with
    # the colour `pad` (zero | mean); null = the dataset's continuous range of the shorter side
    scales: list[float] | None = setting(None, range="> 0")
    pad: str = setting("zero", choices=("zero", "mean"))
    # segmentation folders: training crop [h, w]; null: the dataset's
    crop: list[int] | None = setting(None, range=">= 1")


@dataclass
class ModelConfig:
    student: str = "resnet8"
    teacher: str | None = None
    # A teacher's weights come from exactly one of these two:
    teacher_checkpoint: str | None = None  # a run's best.pt or an exported .safetensors
    teacher_pretrained: bool | str = False  # true: torchvision's ImageNet weights; or a local file
    student_pretrained: bool | str = False  # start the student from them (fine-tuning)
    # architecture options of the networks' builders, e.g. {aux: true} (an auxiliary head)
    student_options: dict[str, Any] = field(default_factory=dict)
    teacher_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = setting("sgd", choices=("sgd", "adamw"))
    lr: float = setting(0.05, range="> 0")
    momentum: float = setting(0.9, range="[0, 1)")
    weight_decay: float = setting(5e-4, range=">= 0")
    nesterov: bool = False
    # weight decay of normalisation layers' weights and biases (BatchNorm, GroupNorm, ...);
    # null = weight_decay. Detectron2's SOLVER.WEIGHT_DECAY_NORM is 0.0
    weight_decay_norm: float | None = setting(None, range=">= 0")

    def check(self, where: str, task: str | None = None) -> None:
        """Nesterov momentum needs a momentum (settings: :mod:`kdlab.core.settings`)."""
        if self.name == "sgd" and self.nesterov and self.momentum <= 0:
            raise UserError(f"{where}.nesterov needs {where}.momentum > 0; set a momentum such "
                            "as 0.9 or nesterov false.")


@dataclass
class ScheduleConfig:
    # poly is stepped per iteration, the others per epoch (or per iteration with `iterations`)
    name: str = setting("multistep", choices=("multistep", "cosine", "constant", "poly"))
    epochs: int = setting(240, range=">= 1")
    milestones: list[int] = setting(factory=lambda: [150, 180, 210], range=">= 1")
    gamma: float = setting(0.1, range="> 0")
    warmup_epochs: int = setting(0, range=">= 0")
    # a linear warm-up over the first N optimiser steps, whatever the schedule's unit: the
    # schedule's LR times factor * (1 - i / N) + i / N at step i (Detectron2's default
    # WARMUP_ITERS 1000, WARMUP_FACTOR 0.001); 0 = none
    warmup_iters: int = setting(0, range=">= 0")
    warmup_factor: float = setting(0.001, range="(0, 1]")
    power: float = setting(0.9, range="> 0")  # poly: lr * (1 - iteration / iterations) ** power
    # the run's length in iterations (optimiser steps), e.g. 40000; when given it replaces
    # epochs (epochs = ceil(iterations / steps per epoch), the last one cut short), every
    # schedule is stepped per iteration and multistep milestones count iterations
    iterations: int | None = setting(None, range=">= 1")

    def check(self, where: str, task: str | None = None) -> None:
        """The warm-up ends before the run does; multistep milestones come in increasing
        order, within the run (epochs, or iterations with ``iterations``) and, counted in
        epochs, after the warm-up (counted in iterations, the builder checks that against
        the steps per epoch, :func:`kdlab.training.optimisation.build_scheduler`)."""
        if self.iterations is None and self.warmup_epochs >= self.epochs:
            raise UserError(f"{where}.warmup_epochs must be less than {where}.epochs "
                            f"({self.epochs}), got {self.warmup_epochs}.")
        if self.iterations is not None and self.warmup_epochs >= self.iterations:
            raise UserError(f"{where}.warmup_epochs must be less than the run's length "
                            f"({where}.iterations={self.iterations}), got "
                            f"{self.warmup_epochs}.")
        if self.warmup_epochs and self.warmup_iters:
            raise UserError(f"{where}.warmup_epochs and {where}.warmup_iters are two warm-ups; "
                            "set one of them to 0.")
        if self.name != "multistep":
            return
        length, unit = ((self.epochs, "epoch") if self.iterations is None
                        else (self.iterations, "iteration"))
        late = [m for m in self.milestones if m > length]
        if late:
            raise UserError(
                f"{where}.milestones {late} come after the last {unit} ({where}.{unit}s="
                f"{length}), so the LR would never drop there; give milestones within the "
                f"{unit}s (e.g. --set {where}.milestones=[...]) or raise {where}.{unit}s.")
        if sorted(self.milestones) != list(self.milestones):
            raise UserError(f"{where}.milestones {self.milestones} must be in increasing order.")
        if self.iterations is None and any(m <= self.warmup_epochs for m in self.milestones):
            raise UserError(f"{where}.milestones {self.milestones} must all come after the "
                            f"{self.warmup_epochs} warm-up epochs.")


@dataclass
class TrainConfig:
    seed: int = setting(0, range=">= 0")
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    amp: str = setting("none", choices=("none", "bf16", "fp16"))
    # auto: channels-last (NHWC) on CPU and CUDA, where it is faster (docs/performance.md)
    channels_last: bool | str = setting("auto", choices=("auto",))
    # true: torch.compile with inductor; or a torch.compile backend name (e.g. aot_eager)
    compile: bool | str = False
    out_dir: str = "runs/default"
    eval_every: int = setting(1, range=">= 1")
    # evaluate every N iterations (counted from the run's start) and at the run's end instead
    # of every eval_every epochs; best.pt is the best of these evaluations
    eval_every_iters: int | None = setting(None, range=">= 1")
    # under torchrun: BatchNorm of the student and the method's modules as SyncBatchNorm
    # (statistics over the global batch; CUDA only); the frozen teacher keeps its own
    sync_bn: bool = False
    # cut epochs short (smoke tests, benchmarks)
    max_steps_per_epoch: int | None = setting(None, range=">= 1")
    progress: str = setting("auto", choices=("auto", "bar", "lines", "none"))
    # CPU intra-op threads: auto = the cores this process may use (affinity, cgroup quota),
    # less busy DataLoader workers (kdlab.runtime.threads); or a number
    threads: int | str = setting("auto", range=">= 1", choices=("auto",))
    # evaluate a frozen teacher once on the validation split before training, print and record
    # its score, warn at chance level (kdlab.training.teacher_check); false for a teacher that is
    # too expensive to evaluate
    evaluate_teacher: bool = True
    # where per-epoch numbers go: metrics.csv always; tensorboard, mlflow, wandb when listed
    # (kdlab.training.trackers, docs/trackers.md)
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    # MLflow tracking URI, e.g. sqlite:///runs/mlflow.db (null: $MLFLOW_TRACKING_URI, else
    # MLflow's default, ./mlflow.db)
    mlflow_uri: str | None = None
    experiment: str = "kdlab"  # the MLflow experiment and the W&B project of the run


@dataclass
class RunConfig:
    task: str = "classification"  # classification | segmentation | detection (kdlab.tasks)
    task_options: dict[str, Any] = field(default_factory=dict)  # e.g. {aux_weight: 0.4}
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "ce"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plugins: list[str] = field(default_factory=list)  # modules imported first (kdlab.core.plugins)

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", "ce"))

    @property
    def method_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------- validation
_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
         list: "a list", dict: "a mapping"}


def _kind(tp: Any) -> str:
    """How a value of annotation ``tp`` is described to the user ("an integer", ...)."""
    origin = typing.get_origin(tp) or tp
    if origin is Sequence or origin is tuple:
        origin = list
    if origin is Mapping:
        origin = dict
    return _KIND.get(origin, f"a {getattr(origin, '__name__', origin)}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float. Raise UserError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        choices = [arg for arg in args if arg is not type(None)]
        errors = []
        for arg in choices:
            try:
                return _coerce(value, arg, where)
            except UserError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise UserError(f"{where} must be {' or '.join(_kind(a) for a in choices)}, "
                        f"got {value!r}.")
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be {_kind(tp)}, got {value!r}.")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise UserError(f"{where} must be {_kind(tp)}, got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where=where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be {_kind(tp)}, got {value!r}.")
        if not math.isfinite(value):  # .nan / .inf: never a meaningful setting
            raise UserError(f"{where} must be a finite number, got {value!r}.")
        return float(value)
    if tp in (int, bool, str):
        # bool is a subclass of int: `true` is not an integer, 1 is not true.
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise UserError(f"{where} must be {_kind(tp)}, got {value!r}.")
        return value
    return value


def build_dataclass(cls: type[T], values: Mapping[str, Any] | None, *, where: str) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are UserErrors."""
    if values is None:
        values = {}
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise UserError(f"{where} must be a mapping of keys to values, got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(
                f"Unknown key {where}.{key}.{did_you_mean(str(key), names)} "
                f"Known keys: {', '.join(names)}."
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


# --------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=0.1'`` -> (['optim', 'lr'], 0.1); the value is read as YAML."""
    if "=" not in text:
        raise UserError(f"Override {text!r} must look like key.sub=value, e.g. optim.lr=0.05.")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"Override {text!r} has an empty key; write e.g. optim.lr=0.05.")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except DuplicateKeyError as e:
        raise UserError(f"Override {text!r}: {e}; give each key once.") from None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in a nested dict (creating levels as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"Override {text!r}: {part!r} is a value, not a section.")
            node = child
        node[path[-1]] = value
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe's sections (``-``: read from standard input); a missing, binary, empty or
    repeated-key file is a UserError."""
    p = Path(path)
    try:
        tree = load_yaml(read_stdin("Recipe") if str(path) == "-" else read_text(p, "Recipe"))
    except DuplicateKeyError as e:
        raise UserError(f"Recipe {str(p)!r} is ambiguous: {e}; keep one.") from None
    except yaml.YAMLError as e:
        raise UserError(f"Recipe {str(p)!r} is not valid YAML ({yaml_problem(e)}); fix the "
                        "file.") from None
    if tree is None or tree == {}:
        raise UserError(f"Recipe {str(p)!r} is empty; a recipe needs at least a data, model, "
                        "method and schedule section (copy one from `recipes/`).")
    if not isinstance(tree, dict):
        raise UserError(f"Recipe {str(p)!r} must be a mapping of sections (data, model, ...).")
    return tree


#: the paper's LR steps (150, 180, 210 of 240 epochs) as fractions of the run
MILESTONE_FRACTIONS = (0.625, 0.75, 0.875)


def scaled_milestones(epochs: int) -> list[int]:
    """The default LR steps for a run of ``epochs``: :data:`MILESTONE_FRACTIONS` of it
    (150, 180, 210 of 240), each within the run."""
    steps = sorted({max(1, round(epochs * f)) for f in MILESTONE_FRACTIONS})
    return [m for m in steps if m < epochs] or [epochs]


def follow_epochs(tree: dict[str, Any]) -> dict[str, str]:
    """Settings the user did not write that follow the epochs they did write, set in
    ``tree``: ``schedule.milestones`` of a multistep schedule whose ``schedule.epochs`` is
    given without them. Returns ``{key: the sentence that says so}`` (empty when nothing
    changed); milestones the user wrote are kept, and checked against the epochs."""
    schedule = tree.get("schedule")
    if not isinstance(schedule, dict) or "epochs" not in schedule or "milestones" in schedule:
        return {}
    default = ScheduleConfig()
    epochs = schedule["epochs"]
    if (schedule.get("name", default.name) != "multistep" or isinstance(epochs, bool)
            or not isinstance(epochs, int) or epochs < 1):
        return {}  # another schedule; or an epoch count the validation refuses
    milestones = scaled_milestones(epochs)
    if milestones == default.milestones:
        return {}
    schedule["milestones"] = milestones
    return {"schedule.milestones": (
        f"schedule.milestones {milestones}: not given, so the default "
        f"{default.milestones} of {default.epochs} epochs scaled to schedule.epochs={epochs}")}


def load_config(recipe: str | Path | None = None, overrides: Sequence[str] = (), *,
                derived: dict[str, str] | None = None) -> RunConfig:
    """Read a recipe (or start from the defaults), apply overrides and validate; unwritten
    defaults follow the epochs written (:func:`follow_epochs`), each noted in ``derived``."""
    tree = read_yaml(recipe) if recipe is not None else {}
    tree = apply_overrides(tree, overrides)
    notes = follow_epochs(tree)
    if derived is not None:
        derived.update(notes)
    method = tree.get("method", {"name": "ce"})
    if isinstance(method, str):
        tree["method"] = {"name": method}
    elif isinstance(method, Mapping) and "name" not in method:
        raise UserError("The method section needs a name, e.g. `method: {name: kd}`.")
    return build_dataclass(RunConfig, tree, where="config")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from kdlab.runtime.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
