"""What kdlab's trajectory (step-exact) parity fixtures are run on, shared by the generator
(``trajectory.py``) and the CI test (``tests/methods/test_parity_trajectory.py``).

A trajectory is a few SGD steps of one method on one CIFAR pair (the networks and method
modules of ``parity_setup``, their BatchNorm statistics measured, in float64), spread over
three epochs so that warm-ups and the first LR milestone are crossed: one step in epoch 0,
one in epoch 1, one in the epoch of the recipe's first milestone (the epochs between are
skipped; only the LR schedule advances through them). Every step gets its own fixed
batch; labels and CRD's negative rows come from seeds too. kdlab's side is its own
training step: the pair's CIFAR-100 recipe (method options, optimiser, schedule) ->
``Optimisation.build`` -> ``train_step`` (the trainer's step), with ``set_epoch`` at every
epoch start and ``end_epoch`` after it.

After every step a digest of each tensor of kdlab's distiller ``state_dict`` (parameters
and buffers) is recorded: its norm and a seeded random projection, of the tensor and of its
change since the start (:func:`digest`), so that a wrong update shows even where it is small
next to the weight.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import parity_setup as P
import torch
from torch import Tensor

from kdlab.core.config import RunConfig, load_config
from kdlab.methods import build_distiller
from kdlab.methods.base import Distiller
from kdlab.training.optimisation import Optimisation, norm_parameters
from kdlab.training.step import train_step

FIXTURES = P.FIXTURES / "trajectory"
#: (epoch, steps) before the recipe's first milestone is known; "milestone" stands for it
PLAN: tuple[tuple[int | str, int], ...] = ((0, 1), (1, 1), ("milestone", 1))
LABEL_SEED = 16
CALIBRATION_SEED = 17
STEP_SEED = 100
#: relative tolerance of terms and digests (the references agree to ~1e-13 in float64)
RTOL = 1e-10
ATOL = 1e-13

Path_ = tuple[int, int]  # an FCFD path (k, delta)


@dataclass(frozen=True)
class Case:
    """One trajectory: ``method`` on ``pair`` with ``recipe``'s settings (a file under
    ``recipes/cifar100/<method>/``; the pair's own by default), ``batch`` images per step.

    ``optim``: optimiser settings that replace the recipe's, with ``optim_reason`` saying why
    (the reference's loop cannot run the recipe's). ``options``: method options over the
    recipe's, with ``options_reason`` (a recipe that keeps one of kdlab's former defaults
    runs here with the reference's setting). ``exclude``: kdlab state_dict names not
    compared (``fnmatch`` patterns), with the reason."""

    method: str
    pair: str
    reference: str
    batch: int = 4
    recipe: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    options_reason: str = ""
    optim: dict[str, Any] = field(default_factory=dict)
    optim_reason: str = ""
    exclude: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}__{self.pair}"

    @property
    def recipe_path(self) -> Path:
        return P.ROOT / "recipes" / "cifar100" / self.method / f"{self.recipe or self.pair}.yaml"


PATH_STATS = ("FCFD's per-path BatchNorm statistics of the t2s paths: kdlab starts each "
              "path's copy from the network's statistics, the authors' GhostForward from "
              "zeros; neither side's training or evaluation reads them")
SIMKD_FC = ("the student's own classifier: SimKD's student predicts through the teacher's "
            "reused classifier, so kdlab's fc gets no gradient and stays as built, while the "
            "authors' loop keeps it in the graph at CE weight 0 and SGD still applies weight "
            "decay and momentum to it; it is not part of the trained (or exported) student")
REVIEWKD_OPTIM = ("the ReviewKD recipe is the ReviewKD authors' (CIFAR-100/train.py: batch "
                  "128, LR 0.1, Nesterov); mdistiller's trainer, the reference with a step "
                  "function, builds plain SGD (configs/cifar100/reviewkd.yaml: LR 0.05)")

TD_PROJ = "self_teacher.layers.*.td_proj.*.running_var"
TD_PROJ_WHY = ("the BiFPNc's top-down resample runs its 1x1 conv + BN at the coarser size "
               "and then upsamples (the authors upsample first): the same function and "
               "gradients, a quarter of the FLOPs, only BN's unbiased running variance "
               "differs, by n/(n-1) (benchmarks/results/frskd_cost_cpu.md)")
CRD_OPTIONS = ("a memory of 32 samples with 16 negatives (the recipe's 16384 need a 50,000-"
               "sample bank; the rule does not depend on the size), negatives of other "
               "classes as the references' loaders draw them (negatives: class; the recipe "
               "keeps kdlab's former uniform draw); the rows are given to both sides")
REVIEWKD_OPTIONS = ("the teacher's pre-ReLU stage features as mdistiller's preact_feats "
                    "(teacher_features: pre_relu; the recipe keeps kdlab's former "
                    "stage_outputs)")

CASES = {c.name: c for c in [
    Case("fcfd", "resnet8x4_from_resnet32x4", "fcfd",
         exclude={"path_stats.*": PATH_STATS}),
    Case("fcfd", "mobilenetv2_from_vgg13", "fcfd", exclude={"path_stats.*": PATH_STATS}),
    Case("kd", "mobilenetv2_from_vgg13", "mdistiller"),
    Case("dkd", "mobilenetv2_from_vgg13", "mdistiller"),
    Case("crd", "mobilenetv2_from_vgg13", "mdistiller",
         options={**P.CRD_OVERRIDES, "negatives": "class"}, options_reason=CRD_OPTIONS),
    Case("reviewkd", "resnet8x4_from_resnet32x4", "mdistiller",
         options={"teacher_features": "pre_relu"}, options_reason=REVIEWKD_OPTIONS,
         optim={"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False},
         optim_reason=REVIEWKD_OPTIM),
    Case("fitnet", "resnet20_from_resnet56", "repdistiller"),
    Case("at", "resnet20_from_resnet56", "repdistiller"),
    Case("vid", "resnet20_from_resnet56", "repdistiller"),
    Case("sp", "resnet20_from_resnet56", "repdistiller"),
    Case("cc", "mobilenetv2_from_vgg13", "repdistiller"),
    Case("rkd", "resnet20_from_resnet56", "repdistiller"),
    Case("simkd", "resnet8x4_from_resnet32x4", "simkd",
         exclude={"student.net.fc.*": SIMKD_FC}),
    Case("srrl", "resnet8x4_from_resnet32x4", "srrl"),
    Case("frskd", "resnet8_from_self", "frskd", recipe="wrn_16_2_from_self",
         exclude={TD_PROJ: TD_PROJ_WHY}),
    Case("frskd_sla", "resnet8_from_self", "frskd", recipe="wrn_16_2_from_self",
         exclude={TD_PROJ: TD_PROJ_WHY}),
]}
#: pairs of the trajectories beyond parity_setup's (teacher, student); None: self-distillation
PAIRS: dict[str, tuple[str | None, str]] = {
    **P.PAIRS, "resnet20_from_resnet56": ("resnet56", "resnet20"),
    "resnet8_from_self": (None, "resnet8"),
}


# --------------------------------------------------------------------- inputs
def recipe(case: Case) -> RunConfig:
    """The recipe's run configuration, with the case's optimiser replacement."""
    cfg = load_config(case.recipe_path)
    for key, value in case.optim.items():
        setattr(cfg.optim, key, value)
    return cfg


def method_options(case: Case) -> dict[str, Any]:
    return {**recipe(case).method_options, **case.options}


def epochs(cfg: RunConfig) -> list[tuple[int, int]]:
    """The plan's (epoch, steps) with the milestone epoch filled in."""
    first = cfg.schedule.milestones[0]
    return [(first if e == "milestone" else int(e), n) for e, n in PLAN]


def labels() -> Tensor:
    """The class of every sample of the (CRD_TRAIN_SIZE-sample) training set."""
    g = torch.Generator().manual_seed(LABEL_SEED)
    return torch.randint(0, P.NUM_CLASSES, (P.CRD_TRAIN_SIZE,), generator=g)


def step_batch(step: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Images (float64), labels and distinct dataset indices of step ``step``."""
    g = torch.Generator().manual_seed(STEP_SEED + step)
    x = torch.randn(size, 3, 32, 32, generator=g, dtype=torch.float64)
    index = torch.randperm(P.CRD_TRAIN_SIZE, generator=g)[:size]
    return x, labels()[index], index


def crd_rows(step: int, index: Tensor, k: int) -> Tensor:
    """CRD's bank rows of step ``step`` (column 0 the positive), drawn as the references'
    loaders draw them: ``k`` distinct samples of other classes (kdlab's class sampler)."""
    from kdlab.methods.crd.memory_bank import sample_class_negatives

    g = torch.Generator().manual_seed(STEP_SEED + 1000 + step)
    return sample_class_negatives(index, labels(), k, generator=g)


def fcfd_paths(candidates: list[Path_]) -> list[list[Path_]]:
    """FCFD's two sampled paths (k, delta) of each step: the shallowest and deepest of each
    direction, in a pair that does not share a network and in pairs that do (run as one
    batch by kdlab)."""
    s2t = sorted(k for k, d in candidates if d == 1)
    t2s = sorted(k for k, d in candidates if d == 0)
    return [[(s2t[0], 1), (t2s[-1], 0)], [(s2t[0], 1), (s2t[-1], 1)],
            [(t2s[0], 0), (t2s[-1], 0)]]


# --------------------------------------------------------------------- one-epoch loop
def unique_state(d: Distiller) -> dict[str, Tensor]:
    """The distiller's state_dict with each tensor once, under its first name (a combo's
    parts hold the student again)."""
    seen: set[int] = set()
    out = {}
    for name, t in d.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t.detach()
    return out


def one_epoch(d: Distiller, cfg: RunConfig, steps: int, batch: Callable[[int], tuple],
              before_step: Callable[[int, Optimisation], dict[str, Any]] | None = None,
              on_step: Callable[[int, dict[str, Any]], None] | None = None
              ) -> list[dict[str, Any]]:
    """kdlab's side of a one-epoch trajectory, as the trainer runs it: ``cfg``'s optimiser
    and schedule (the norm parameters passed, as the trainer does), ``train_step`` on
    ``batch(i)`` = (inputs, targets) for ``steps`` steps. Per step: the LR, whatever
    ``before_step(i, optim)`` returns (it may also force the step's random draws), the
    weighted terms and the digest of :func:`unique_state` against the start."""
    params = [p for p in d.parameters() if p.requires_grad]
    optim = Optimisation.build(params, d.separate_optimizers(), cfg.optim, cfg.schedule,
                               steps_per_epoch=steps, device=torch.device("cpu"), amp="none",
                               norm=norm_parameters(d))
    start = {k: v.clone() for k, v in unique_state(d).items()}
    d.set_epoch(0, 1)
    d.train()
    records = []
    for i in range(steps):
        x, y = batch(i)
        record = {"lr": optim.lr, **(before_step(i, optim) if before_step else {})}
        _, losses, _ = train_step(d, optim, x, y, None, device=torch.device("cpu"),
                                  amp="none")
        record["terms"] = {k: float(v.detach()) for k, v in losses.items()}
        record["digest"] = digest(unique_state(d), start)
        records.append(record)
        if on_step is not None:
            on_step(i, record)
    return records


# --------------------------------------------------------------------- digest
def digest(named: dict[str, Tensor], start: dict[str, Tensor]) -> dict[str, list[float]]:
    """Per tensor: norm and ``<w, r> / sqrt(n)`` of the tensor and of its change since
    ``start``; ``r`` standard normal from a generator seeded by the name."""
    out = {}
    for name, t in named.items():
        w = t.detach().to(torch.float64).flatten()
        d = w - start[name].detach().to(torch.float64).flatten()
        r = _direction(name, w.numel())
        out[name] = [float(w.norm()), float(w @ r), float(d.norm()), float(d @ r)]
    return out


@functools.lru_cache(maxsize=4096)
def _direction(name: str, n: int) -> Tensor:
    """The random projection of tensor ``name``: N(0, 1/n) entries, seeded by the name."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(n, generator=g, dtype=torch.float64) / n ** 0.5


def digest_error(got: list[float], want: list[float]) -> float:
    """The larger relative difference of two digests: the tensor's entries relative to its
    norm, the change's relative to the change's norm (plus 1e-13 of the tensor's, for a
    change that is zero); each with a floor of ``ATOL / RTOL`` (a BatchNorm statistic that
    is rounding noise around 0)."""
    floor = ATOL / RTOL
    scale = abs(want[0]) + floor
    change = abs(want[2]) + 1e-13 * abs(want[0]) + floor
    return max(abs(got[0] - want[0]) / scale, abs(got[1] - want[1]) / scale,
               abs(got[2] - want[2]) / change, abs(got[3] - want[3]) / change)


def digest_close(got: list[float], want: list[float], rtol: float = RTOL) -> bool:
    return digest_error(got, want) <= rtol


def compared(case: Case, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The distiller's state_dict less the case's excluded names."""
    return {k: v for k, v in state.items() if not excluded(case, k)}


def excluded(case: Case, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in case.exclude)


# --------------------------------------------------------------------- kdlab's side
#: the BatchNorm statistics :func:`measure_statistics` gave on the CPU that made the fixtures
#: (AVX2 kernels), per network: float32 convolutions round differently on other vector units
#: (AVX-512 moved the statistics by about 1e-7, which moves every term that reads an eval-mode
#: teacher past :data:`RTOL`), so the trajectories read the stored ones
CALIBRATION = FIXTURES / "calibration.pt"


def networks(case: Case) -> tuple[Any, Any]:
    """(teacher or None, student) of the case's pair, seeded as parity_setup's, with the
    BatchNorm running statistics of :func:`calibrated`."""
    t_name, s_name = PAIRS[case.pair]
    teacher = calibrated(P.seeded_network(t_name, P.SEEDS["teacher"]),
                         f"{t_name}@teacher") if t_name else None
    return teacher, calibrated(P.seeded_network(s_name, P.SEEDS["student"]),
                               f"{s_name}@student")


@functools.cache
def stored_statistics() -> dict[str, list[Tensor]]:
    return torch.load(CALIBRATION, weights_only=True) if CALIBRATION.is_file() else {}


def _bn_buffers(net: Any) -> list[Tensor]:
    return [b for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)]


@torch.no_grad()
def calibrated(net: Any, key: str) -> Any:
    """``net`` in float64 with the BatchNorm statistics stored under ``key``
    (:data:`CALIBRATION`), or measured here (:func:`measure_statistics`) where none are."""
    stored = stored_statistics().get(key)
    if stored is None:
        return measure_statistics(net)
    net = net.double()
    buffers = _bn_buffers(net)
    if len(buffers) != len(stored):
        raise ValueError(f"{CALIBRATION} holds {len(stored)} BatchNorm buffers for {key}, "
                         f"the network has {len(buffers)}: write the file again")
    for buf, value in zip(buffers, stored, strict=True):
        buf.copy_(value)
    return net


def write_statistics() -> None:
    """Measure every pair's networks (:func:`measure_statistics`) and store the statistics in
    :data:`CALIBRATION`; run on the CPU whose numbers the fixtures hold."""
    stats: dict[str, list[Tensor]] = {}
    for t_name, s_name in PAIRS.values():
        for name, role in ((t_name, "teacher"), (s_name, "student")):
            if name and f"{name}@{role}" not in stats:
                net = measure_statistics(P.seeded_network(name, P.SEEDS[role]))
                stats[f"{name}@{role}"] = [b.clone() for b in _bn_buffers(net)]
    torch.save(stats, CALIBRATION)


@torch.no_grad()
def measure_statistics(net: Any, batches: int = 2, size: int = 16) -> Any:
    """``net`` with every BatchNorm's running statistics the average over ``batches`` random
    batches (float32, then float64 again: the weights are float32 numbers anyway). The
    drawn statistics of ``parity_setup`` let an eval-mode teacher's features grow with
    depth (resnet56's VID loss starts at 3e10, and training steps blow up to NaN); measured
    statistics keep them at the scale of a trained network's."""
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    was_training = net.training
    net.float().train()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
    for _ in range(batches):
        net(torch.randn(size, *net.input_shape, generator=g))
    for bn in bns:
        bn.momentum = 0.1
    return net.double().train(was_training)


def build(case: Case, teacher: Any, student: Any) -> Distiller:
    """The case's kdlab distiller in float64 and train mode (extras from the seed)."""
    torch.manual_seed(P.SEEDS["extras"])
    d = build_distiller(case.method, method_options(case), student, teacher,
                        train_size=P.CRD_TRAIN_SIZE)
    if case.method == "crd":
        d.use_train_labels(labels())
    return d.double().train()


@contextlib.contextmanager
def forced(case: Case, d: Distiller, step: int, index: Tensor) -> Iterator[None]:
    """kdlab's random draws of step ``step`` replaced by the fixed ones."""
    if case.method == "fcfd":
        paths = fcfd_paths(d.candidates)[step]
        d.sample_paths = lambda: sorted(paths)  # type: ignore[method-assign]
    elif case.method == "crd":
        rows = crd_rows(step, index, d.cfg.num_negatives)
        d.memory.draw_rows = lambda i: rows  # type: ignore[method-assign]
    yield


def run(case: Case, d: Distiller | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """kdlab's trajectory of ``case``: per step the LR, the weighted terms and the digest of
    the compared state."""
    cfg = recipe(case)
    if d is None:
        d = build(case, *networks(case))
    plan = epochs(cfg)
    params = [p for p in d.parameters() if p.requires_grad]
    optim = Optimisation.build(params, d.separate_optimizers(), cfg.optim, cfg.schedule,
                               steps_per_epoch=max(n for _, n in plan),
                               device=torch.device("cpu"), amp="none")
    start = {k: v.detach().clone() for k, v in compared(case, d.state_dict()).items()}
    steps, i = [], 0
    todo = dict(plan)
    for epoch in range(max(todo) + 1):
        if epoch in todo:
            d.set_epoch(epoch, cfg.schedule.epochs)
            d.train()
            for _ in range(todo[epoch]):
                x, y, index = step_batch(i, case.batch)
                lr = optim.lr
                with forced(case, d, i, index):
                    _, losses, _ = train_step(d, optim, x, y, index,
                                              device=torch.device("cpu"), amp="none")
                record = {"epoch": epoch, "lr": lr,
                          "terms": {k: float(v.detach()) for k, v in losses.items()},
                          "digest": digest(compared(case, d.state_dict()), start)}
                steps.append(record)
                if on_step is not None:
                    on_step(i, record)
                i += 1
        optim.end_epoch()
    return steps
