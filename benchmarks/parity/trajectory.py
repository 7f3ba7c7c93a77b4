"""Write kdlab's trajectory (step-exact) parity fixtures: a few training steps of every case of
``trajectory_setup.CASES`` run by the reference implementations' own training loops, on
kdlab's weights, batches and random draws, in float64 (``tests/methods/test_parity_trajectory.py``).

Usage (each path a checkout of that repository at the commit recorded in the fixtures)::

    python benchmarks/parity/trajectory.py \
        --fcfd refs/FCFD --mdistiller refs/mdistiller \
        --repdistiller refs/RepDistiller --simkd refs/SimKD \
        --frskd refs/FRSKD --srrl refs/KD_SRRL [--cases NAME ...]

For every case the reference's loop runs the steps: the FCFD authors' ``Trainer.
train_one_epoch`` over their ``MetaModel``; mdistiller's ``BaseTrainer.train_iter`` /
``CRDTrainer.train_iter`` (after its ``adjust_learning_rate``); RepDistiller's and the SimKD
authors' ``train_distill`` (after their ``adjust_learning_rate``); the FRSKD authors'
``utils.train`` (their ``lr_scheduler``, stepped per epoch); the SRRL authors' ``train``
(their ``lr_step_policy``). Their modules, optimisers and criteria are built as their
scripts build them (the lines are cited below), with the reference's own settings; every
weight is copied from kdlab's freshly built distiller. Per step the reference's weighted
loss terms (read where its loop computes them), its total (the tensor its loop calls
``backward`` on), its learning rate and the digest of every tensor that corresponds to one
of kdlab's are recorded; then kdlab runs the same case and must agree to
``trajectory_setup.RTOL``, or nothing is written.

Shims, all undone afterwards: ``Tensor.cuda`` / ``Module.cuda`` return the object (CPU);
``Tensor.float`` leaves float64 tensors alone (mdistiller's and RepDistiller's loops cast the
images with it); stand-ins for imports the references need but never use here
(``tensorboardX``, ``torchsummary``, ``easydict``'s attribute dict, ``yacs``' CfgNode as an
attribute dict, ``scipy.stats.norm``); the FCFD authors' timm ``NativeScaler`` is replaced by
the plain ``backward`` + ``step`` it performs without FP16; the SRRL authors' released
``statm_loss(feat_s, feat_t)`` call (which raises ``TypeError``: it passes the tensors to the
module's constructor) is given the module's forward, ``statm_loss()(feat_s, feat_t)``, and
their top-k ``accuracy`` (progress meters only; it ``view``s a transposed tensor, which
current PyTorch refuses) answers zeros.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as G  # noqa: E402
import parity_setup as P  # noqa: E402
import trajectory_setup as TS  # noqa: E402

REPOS = {k: G.REPOS[k] for k in ("fcfd", "mdistiller", "repdistiller", "simkd", "frskd",
                                 "srrl")}
COMMAND = ("python benchmarks/parity/trajectory.py --fcfd <FCFD checkout> --mdistiller "
           "<mdistiller checkout> --repdistiller <RepDistiller checkout> --simkd <SimKD "
           "checkout> --frskd <FRSKD checkout> --srrl <KD_SRRL checkout>")
Getter = Callable[[], Tensor]


# --------------------------------------------------------------------- recording
class Recorder:
    """The reference's trajectory: terms added while a step runs, then at its optimiser
    step the learning rate, the total and the digest of the linked tensors."""

    def __init__(self, links: dict[str, Getter]) -> None:
        self.links = links
        self.start = {k: get().detach().clone() for k, get in links.items()}
        self.steps: list[dict[str, Any]] = []
        self.terms: dict[str, float] = {}
        self.total: float | None = None
        self.epoch = 0
        self.optim: dict[str, Any] = {}

    def add(self, name: str, value: float) -> None:
        self.terms[name] = self.terms.get(name, 0.0) + float(value)

    def stepped(self, lr: float) -> None:
        if self.total is None:
            raise SystemExit("the reference stepped without a backward")
        now = {k: get() for k, get in self.links.items()}
        self.steps.append({"epoch": self.epoch, "lr": lr, "terms": self.terms,
                           "total": self.total, "digest": TS.digest(now, self.start)})
        self.terms, self.total = {}, None

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Record after every ``optimizer.step`` (and the optimiser's settings)."""
        self.optim = {k: optimizer.defaults[k]
                      for k in ("lr", "momentum", "weight_decay", "nesterov")}
        step = optimizer.step

        def recorded(*args: Any, **kwargs: Any) -> Any:
            lr = optimizer.param_groups[0]["lr"]
            out = step(*args, **kwargs)
            self.stepped(lr)
            return out
        optimizer.step = recorded  # type: ignore[method-assign]


class Term(nn.Module):
    """Calls ``fn`` (a loss module) and adds ``weight`` times its value (summed when it is
    a list) to the recorder's term ``name``."""

    def __init__(self, fn: nn.Module, rec: Recorder, name: str, weight: float = 1.0) -> None:
        super().__init__()
        self.fn, self.name, self.weight = fn, name, weight
        object.__setattr__(self, "rec", rec)

    def forward(self, *args: Any) -> Any:
        out = self.fn(*args)
        value = sum(out) if isinstance(out, (list, tuple)) else out
        self.rec.add(self.name, self.weight * float(value.detach()))
        return out


def link(prefix: str, ours: nn.Module, theirs: nn.Module) -> dict[str, Getter]:
    """kdlab's ``prefix + name`` -> the reference's tensor copied from it (state_dict order,
    as ``parity_setup.copy_weights``), read anew at every call."""
    mine, their = ours.state_dict(), theirs.state_dict()
    if [v.shape for v in mine.values()] != [v.shape for v in their.values()]:
        raise SystemExit(f"{prefix}: the tensors of kdlab's and the reference's module differ")
    return {prefix + a: (lambda m=theirs, b=b: m.state_dict()[b]) for a, b in zip(mine, their)}


def prefix_of(d: nn.Module, module: nn.Module) -> str:
    """``module``'s name inside kdlab's distiller ``d``, with a trailing dot."""
    return next(n for n, m in d.named_modules() if m is module) + "."


def copied(prefix: str, ours: nn.Module, theirs: nn.Module) -> dict[str, Getter]:
    P.copy_weights(ours, theirs)
    return link(prefix, ours, theirs)


@contextlib.contextmanager
def shims(rec: Recorder) -> Iterator[None]:
    """CPU and float64 shims, and the total recorded at every ``backward``."""
    saved = {(torch.Tensor, "cuda"): torch.Tensor.cuda, (nn.Module, "cuda"): nn.Module.cuda,
             (torch.Tensor, "float"): torch.Tensor.float,
             (torch.Tensor, "backward"): torch.Tensor.backward}
    float_ = torch.Tensor.float
    backward = torch.Tensor.backward

    def keep_double(t: Tensor, *a: Any, **k: Any) -> Tensor:
        return t if t.dtype == torch.float64 else float_(t, *a, **k)

    def recorded_backward(t: Tensor, *a: Any, **k: Any) -> None:
        if t.numel() == 1 and t.requires_grad:
            rec.total = float(t.detach())
        backward(t, *a, **k)

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.float = keep_double  # type: ignore[method-assign]
    torch.Tensor.backward = recorded_backward  # type: ignore[method-assign]
    try:
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


def stub_modules(**modules: dict[str, Any]) -> None:
    """Importable stand-ins for packages a reference imports but does not use here."""
    for name, attrs in modules.items():
        if name in sys.modules:
            continue
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        sys.modules[name] = m


class AttrDict(dict):
    """A dict whose keys are attributes too (easydict's / yacs' CfgNode's use here)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def merged(cfg: AttrDict, tree: dict[str, Any]) -> AttrDict:
    """``tree`` (a YAML config) written into ``cfg`` key by key, as yacs' merge does."""
    for k, v in tree.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            merged(cfg[k], v)
        else:
            cfg[k] = v
    return cfg


def epochs_of(case: TS.Case) -> list[tuple[int, int]]:
    return TS.epochs(TS.recipe(case))


def batches(case: TS.Case) -> list[list[tuple[Tensor, Tensor, Tensor]]]:
    """The steps' batches grouped by epoch of the plan."""
    out, i = [], 0
    for _, n in epochs_of(case):
        out.append([TS.step_batch(i + j, case.batch) for j in range(n)])
        i += n
    return out


# --------------------------------------------------------------------- mdistiller
MD_CONFIGS = {  # case -> configs/cifar100/*.yaml merged in order (mdistiller's own files)
    "kd__mobilenetv2_from_vgg13": ["kd.yaml", "dkd/vgg13_mv2.yaml#SOLVER"],
    "dkd__mobilenetv2_from_vgg13": ["dkd/vgg13_mv2.yaml"],
    "crd__mobilenetv2_from_vgg13": ["crd.yaml", "dkd/vgg13_mv2.yaml#SOLVER"],
    "reviewkd__resnet8x4_from_resnet32x4": ["reviewkd.yaml"],
}
MD_NAMES = {"resnet32x4": "resnet32x4", "resnet8x4": "resnet8x4", "vgg13": "vgg13",
            "mobilenetv2": "MobileNetV2"}


def mdistiller_cfg(root: Path, case: TS.Case) -> AttrDict:
    """mdistiller's CFG (``mdistiller/engine/cfg.py``) merged with its CIFAR-100 configs for
    the pair (the SOLVER block of the pair's DKD config where its KD / CRD config is for
    another pair: LR 0.01 for MobileNetV2)."""
    import yaml

    stub_modules(**{"yacs": {}, "yacs.config": {"CfgNode": AttrDict}})
    from mdistiller.engine.cfg import CFG  # type: ignore[import-not-found]

    cfg = _attr(json.loads(json.dumps(CFG)))  # a copy
    for entry in MD_CONFIGS[case.name]:
        file, _, block = entry.partition("#")
        tree = yaml.safe_load((root / "configs" / "cifar100" / file).read_text())
        merged(cfg, {block: tree[block]} if block else tree)
    return cfg


def _attr(tree: Any) -> Any:
    if isinstance(tree, dict):
        return AttrDict({k: _attr(v) for k, v in tree.items()})
    return tree


def drive_mdistiller(case: TS.Case, paths: dict[str, Path], d: Any, teacher: Any,
                     student: Any) -> Recorder:
    """mdistiller's trainer (``mdistiller/engine/trainer.py``): the optimiser of
    ``init_optimizer``, per epoch ``adjust_learning_rate(epoch)`` (1-based) and
    ``distiller.train()``, per step ``train_iter`` (or ``CRDTrainer.train_iter``)."""
    root = paths["mdistiller"]
    G._norm_cdf_shim()
    stub_modules(**{"tensorboardX": {"SummaryWriter": object}})
    cfg = mdistiller_cfg(root, case)
    from mdistiller.distillers import distiller_dict  # type: ignore[import-not-found]
    from mdistiller.engine.trainer import (  # type: ignore[import-not-found]
        BaseTrainer,
        CRDTrainer,
    )
    from mdistiller.engine.utils import (  # type: ignore[import-not-found]
        AverageMeter,
        adjust_learning_rate,
    )
    from mdistiller.models import cifar_model_dict  # type: ignore[import-not-found]

    t_name, s_name = TS.PAIRS[case.pair]
    ref_t = cifar_model_dict[MD_NAMES[t_name]][0](num_classes=P.NUM_CLASSES).double()
    ref_s = cifar_model_dict[MD_NAMES[s_name]][0](num_classes=P.NUM_CLASSES).double()
    P.copy_weights(teacher.net, ref_t)
    links = copied("student.net.", student.net, ref_s)
    kind = cfg.DISTILLER.TYPE
    if kind == "CRD":
        CRD = importlib.import_module("mdistiller.distillers.CRD")  # noqa: N806 - a module

        CRD.AliasMethod.cuda = lambda self: None  # their sampler is not used (rows given)
        cfg.CRD.NCE.K = d.cfg.num_negatives  # the fixtures' small memory (both sides)
        cfg.CRD.FEAT.STUDENT_DIM = student.embedding_dim  # set per pair in a config
        cfg.CRD.FEAT.TEACHER_DIM = teacher.embedding_dim
        with torch_default_dtype(torch.float64):  # their float32 params buffer otherwise
            distiller = distiller_dict[kind](ref_s, ref_t, cfg, P.CRD_TRAIN_SIZE)
        links.update(copied("embed_student.", d.embed_student, distiller.embed_s))
        links.update(copied("embed_teacher.", d.embed_teacher, distiller.embed_t))
        mem = distiller.contrast
        with torch.no_grad():
            mem.memory_v1.copy_(d.memory.bank_student)
            mem.memory_v2.copy_(d.memory.bank_teacher)
        links.update({"memory.bank_student": lambda: mem.memory_v1,
                      "memory.bank_teacher": lambda: mem.memory_v2,
                      "memory.z_student": lambda: mem.params[2],
                      "memory.z_teacher": lambda: mem.params[3]})
    else:
        distiller = distiller_dict[kind](ref_s, ref_t, cfg)
    distiller.double()
    if kind == "REVIEWKD":
        for i, abf in enumerate(d.abfs):  # theirs are kept deepest first
            links.update(copied(f"abfs.{i}.", abf, distiller.abfs[len(d.abfs) - 1 - i]))
    trainer = object.__new__(CRDTrainer if kind == "CRD" else BaseTrainer)
    trainer.cfg = cfg
    trainer.distiller = nn.DataParallel(distiller)  # as their train.py (no GPU: a pass-through)
    trainer.optimizer = trainer.init_optimizer(cfg)
    rec = Recorder(links)
    original = distiller.forward_train

    def forward_train(**kwargs: Any) -> Any:
        preds, losses = original(**kwargs)
        for name, value in losses.items():
            rec.add(MD_TERMS[kind][name], float(value.detach().mean()))
        return preds, losses
    distiller.forward_train = forward_train
    rec.watch(trainer.optimizer)
    step = 0
    with shims(rec):
        for (epoch, _), group in zip(epochs_of(case), batches(case), strict=True):
            rec.epoch = epoch
            adjust_learning_rate(epoch + 1, cfg, trainer.optimizer)
            trainer.distiller.train()
            meters = {k: AverageMeter() for k in ("training_time", "data_time", "losses",
                                                  "top1", "top5")}
            for x, y, index in group:
                data = (x, y, index)
                if kind == "CRD":
                    data = (*data, TS.crd_rows(step, index, d.cfg.num_negatives))
                trainer.train_iter(data, epoch + 1, meters)
                step += 1
    return rec


MD_TERMS = {"KD": {"loss_ce": "ce", "loss_kd": "kd"}, "DKD": {"loss_ce": "ce", "loss_kd": "dkd"},
            "CRD": {"loss_ce": "ce", "loss_kd": "crd"},
            "REVIEWKD": {"loss_ce": "ce", "loss_kd": "review"}}


@contextlib.contextmanager
def torch_default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# --------------------------------------------------------------------- RepDistiller, SimKD
REP = {  # method -> (--distill, -r gamma, -a alpha, -b beta): scripts/run_cifar_distill.sh
    "fitnet": ("hint", 1.0, 0.0, 100.0), "at": ("attention", 1.0, 0.0, 1000.0),
    "sp": ("similarity", 1.0, 0.0, 3000.0), "cc": ("correlation", 1.0, 0.0, 0.02),
    "vid": ("vid", 1.0, 0.0, 1.0), "rkd": ("rkd", 1.0, 0.0, 1.0),
}
REP_TERMS = {"fitnet": "hint", "at": "at", "sp": "sp", "cc": "cc", "vid": "vid",
             "rkd": "rkd_angle+rkd_distance"}


def rep_opt(case: TS.Case, distill: str, gamma: float, alpha: float, beta: float,
            **extra: Any) -> types.SimpleNamespace:
    """RepDistiller's ``opt`` (train_student.py's argparse defaults, the script's flags, its
    LR rule for MobileNetV2/ShuffleNets) for the case's pair."""
    s_name = TS.PAIRS[case.pair][1]
    lr = 0.01 if s_name in ("mobilenetv2", "shufflev1", "shufflev2") else 0.05
    return types.SimpleNamespace(
        distill=distill, gamma=gamma, alpha=alpha, beta=beta, kd_T=4, hint_layer=2,
        feat_dim=128, learning_rate=lr, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1,
        weight_decay=5e-4, momentum=0.9, print_freq=10**9, **extra)


def drive_repdistiller(case: TS.Case, paths: dict[str, Path], d: Any, teacher: Any,
                       student: Any) -> Recorder:
    """RepDistiller's ``train_student.py`` set-up (module, trainable and criterion lists,
    lines 180-279) and loop (``adjust_learning_rate(epoch)``, then ``helper/loops.py``
    ``train_distill``)."""
    from distiller_zoo import (  # type: ignore[import-not-found]
        Attention,
        Correlation,
        DistillKL,
        HintLoss,
        RKDLoss,
        Similarity,
        VIDLoss,
    )
    from helper.loops import train_distill  # type: ignore[import-not-found]
    from helper.util import adjust_learning_rate  # type: ignore[import-not-found]
    from models.util import ConvReg, LinearEmbed  # type: ignore[import-not-found]

    from models import model_dict  # type: ignore[import-not-found]

    distill, gamma, alpha, beta = REP[case.method]
    opt = rep_opt(case, distill, gamma, alpha, beta)
    t_name, s_name = TS.PAIRS[case.pair]
    model_t = model_dict[G.REF_NAMES.get(t_name, t_name)](num_classes=P.NUM_CLASSES).double()
    model_s = model_dict[G.REF_NAMES.get(s_name, s_name)](num_classes=P.NUM_CLASSES).double()
    P.copy_weights(teacher.net, model_t)
    links = copied("student.net.", student.net, model_s)
    data = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model_t.eval()
    model_s.eval()
    feat_t, _ = model_t(data, is_feat=True)
    feat_s, _ = model_s(data, is_feat=True)
    module_list, trainable_list = nn.ModuleList([model_s]), nn.ModuleList([model_s])
    if distill == "hint":
        criterion_kd: nn.Module = HintLoss()
        regress_s = ConvReg(feat_s[opt.hint_layer].shape, feat_t[opt.hint_layer].shape)
        links.update(copied("bridge.", d.bridge, regress_s.double()))
        module_list.append(regress_s)
        trainable_list.append(regress_s)
    elif distill == "attention":
        criterion_kd = Attention()
    elif distill == "similarity":
        criterion_kd = Similarity()
    elif distill == "rkd":
        criterion_kd = RKDLoss()
    elif distill == "correlation":
        criterion_kd = Correlation()
        embed_s = LinearEmbed(feat_s[-1].shape[1], opt.feat_dim).double()
        embed_t = LinearEmbed(feat_t[-1].shape[1], opt.feat_dim).double()
        links.update(copied("projection.", d.projection, embed_s))
        links.update(copied("teacher_projection.", d.teacher_projection, embed_t))
        module_list.extend([embed_s, embed_t])
        trainable_list.extend([embed_s, embed_t])
    else:  # vid
        s_n = [f.shape[1] for f in feat_s[1:-1]]
        t_n = [f.shape[1] for f in feat_t[1:-1]]
        criterion_kd = nn.ModuleList([VIDLoss(s, t, t) for s, t in zip(s_n, t_n)]).double()
        for i, crit in enumerate(criterion_kd):
            links.update(copied(f"regressors.{i}.", d.regressors[i], crit))
        trainable_list.append(criterion_kd)
    rec = Recorder(links)
    criterion_cls = Term(nn.CrossEntropyLoss(), rec, "ce", gamma)
    if distill == "vid":
        kd: nn.Module = nn.ModuleList([Term(c, rec, "vid", beta) for c in criterion_kd])
    else:
        kd = Term(criterion_kd, rec, REP_TERMS[case.method], beta)
    criterion_list = nn.ModuleList([criterion_cls, DistillKL(opt.kd_T), kd])
    optimizer = torch.optim.SGD(trainable_list.parameters(), lr=opt.learning_rate,
                                momentum=opt.momentum, weight_decay=opt.weight_decay)
    module_list.append(model_t)
    rec.watch(optimizer)
    with shims(rec), contextlib.redirect_stdout(sys.stderr):
        for (epoch, _), group in zip(epochs_of(case), batches(case), strict=True):
            rec.epoch = epoch
            adjust_learning_rate(epoch + 1, opt, optimizer)
            train_distill(epoch + 1, group, module_list, criterion_list, optimizer, opt)
    return rec


def drive_simkd(case: TS.Case, paths: dict[str, Path], d: Any, teacher: Any,
                student: Any) -> Recorder:
    """The SimKD authors' ``train_student.py`` set-up (``SimKD`` module, lines 268-288) and
    loop (``adjust_learning_rate``, ``helper/loops.py`` ``train_distill``) with their CIFAR
    script's ``-c 0 -d 0 -b 1 -f 2`` (scripts/run_distill.sh)."""
    from distiller_zoo import DistillKL  # type: ignore[import-not-found]
    from helper.loops import train_distill  # type: ignore[import-not-found]
    from helper.util import adjust_learning_rate  # type: ignore[import-not-found]
    from models.util import SimKD  # type: ignore[import-not-found]

    from models import model_dict  # type: ignore[import-not-found]

    opt = rep_opt(case, "simkd", 0.0, 0.0, 1.0, cls=0.0, div=0.0, factor=2, gpu=None,
                  multiprocessing_distributed=False, dali=None, batch_size=case.batch)
    t_name, s_name = TS.PAIRS[case.pair]
    model_t = model_dict[G.REF_NAMES[t_name]](num_classes=P.NUM_CLASSES).double()
    model_s = model_dict[G.REF_NAMES[s_name]](num_classes=P.NUM_CLASSES).double()
    P.copy_weights(teacher.net, model_t)
    links = copied("student.net.", student.net, model_s)
    data = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model_t.eval()
    model_s.eval()
    feat_t, _ = model_t(data, is_feat=True)
    feat_s, _ = model_s(data, is_feat=True)
    model_simkd = SimKD(s_n=feat_s[-2].shape[1], t_n=feat_t[-2].shape[1],
                        factor=opt.factor).double()
    links.update(copied("projector.", d.projector, model_simkd.transfer))
    if d.head.pre_pool.state_dict():
        raise SystemExit("SimKD: the teacher's head has state before its pool; link it too")
    # kdlab's copy of the reused teacher classifier: their cls_t, the teacher's own fc
    links.update(link("head.classifier.", d.head.classifier, nn.ModuleList([model_t.fc])))
    rec = Recorder({k: v for k, v in links.items() if not TS.excluded(case, k)})
    criterion_list = nn.ModuleList([Term(nn.CrossEntropyLoss(), rec, "ce_unused", 0.0),
                                    DistillKL(opt.kd_T),
                                    Term(nn.MSELoss(), rec, "simkd", opt.beta)])
    module_list = nn.ModuleList([model_s, model_simkd, model_t])
    trainable_list = nn.ModuleList([model_s, model_simkd])
    optimizer = torch.optim.SGD(trainable_list.parameters(), lr=opt.learning_rate,
                                momentum=opt.momentum, weight_decay=opt.weight_decay)
    rec.watch(optimizer)
    with shims(rec), contextlib.redirect_stdout(sys.stderr):
        for (epoch, _), group in zip(epochs_of(case), batches(case), strict=True):
            rec.epoch = epoch
            adjust_learning_rate(epoch + 1, opt, optimizer)
            pairs = [(x, y) for x, y, _ in group]  # their CIFAR loader: (images, labels)
            train_distill(epoch + 1, pairs, module_list, criterion_list, optimizer, opt)
    for s in rec.steps:
        s["terms"].pop("ce_unused", None)
    return rec


# --------------------------------------------------------------------- FRSKD authors
class StagesOf(nn.Module):
    """A RepDistiller ResNet as the FRSKD authors' models answer ``model(x, preact)``:
    ``(feats, logits)``, ``feats`` its stage outputs after the stem (kdlab's cut)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, preact: bool = False) -> tuple[list[Tensor], Tensor]:
        feats, logits = self.net(x, is_feat=True)
        return feats[1:-1], logits


def bifpn_links(d: nn.Module, ours: Any, theirs: nn.Module) -> dict[str, Getter]:
    """kdlab's BiFPNc tensors -> the authors' (the node correspondence of
    :func:`generate._copy_bifpnc`)."""
    links: dict[str, Getter] = {}
    for mine, their in zip(ours.layers, theirs.layers, strict=True):
        pairs = [*zip(mine.lateral, their.lat_conv, strict=True),
                 *zip(mine.bu_lateral, their.lat_conv2, strict=True),
                 *zip(mine.bu_proj, [s[1] for s in their.down_sample], strict=True),
                 *zip(mine.bu_conv, their.down_conv, strict=True),
                 *zip(mine.td_proj, [s[1] for s in their.up_sample], strict=True),
                 *zip(mine.td_conv, their.up_conv, strict=True)]
        for a, b in pairs:
            links.update(link(prefix_of(d, a), a, b))
        for fuse, w in [*zip(mine.bu_fuse, their.down_weight, strict=True),
                        *zip(mine.td_fuse, their.up_weight, strict=True)]:
            links[prefix_of(d, fuse) + "weight"] = lambda w=w: w
    links.update(link(prefix_of(d, ours.fc), ours.fc, theirs.fc))
    return links


def drive_frskd(case: TS.Case, paths: dict[str, Path], d: Any, teacher: Any,
                student: Any) -> Recorder:
    """The FRSKD authors' ``classification/main.py`` set-up (BiFPNc, ``SLALoss`` for
    ``--aux sla``, ``Attention``, ``train_list``, SGD, ``lr_scheduler``) and loop
    (``utils.train`` per epoch, then ``scheduler.step()``); the README's CIFAR-100 command
    (alpha 2, beta 100, ``--aux sla --aux_lamb 1``) and main.py's defaults."""
    G._norm_cdf_shim()
    from classification.distill_loss.AT import Attention  # type: ignore[import-not-found]
    from classification.distill_loss.sla import SLALoss  # type: ignore[import-not-found]
    from classification.models.bifpnc import BiFPNc  # type: ignore[import-not-found]
    from classification.utils import lr_scheduler, train  # type: ignore[import-not-found]

    with G.imported_from(paths["repdistiller"], "models", "distiller_zoo", "crd", "helper",
                         "dataset"):
        from models import model_dict  # type: ignore[import-not-found]

        net = model_dict[TS.PAIRS[case.pair][1]](num_classes=P.NUM_CLASSES).double()
    links = copied("student.net.", student.net, net)
    model = StagesOf(net)
    sla = case.method == "frskd_sla"
    channels = d.self_teacher.in_channels
    args = types.SimpleNamespace(
        lr=0.1, momentum=0.9, weight_decay=1e-4, scheduler="step", schedule=[100, 150],
        lr_decay=0.1, epoch=200, repeat=1, depth=[2] * 3, width=2, temperature=4.0,
        distill="att", alpha=2.0, beta=100.0, aux="sla" if sla else "none",
        aux_lamb=1.0 if sla else 0.0, aug="none", num_features=len(channels),
        network_channels=channels, num_classes=P.NUM_CLASSES)
    bifpn = BiFPNc(channels, P.NUM_CLASSES, args).double()
    G._copy_bifpnc(d.self_teacher, bifpn)
    links.update(bifpn_links(d, d.self_teacher, bifpn))
    rec = Recorder({})
    if sla:
        criterion_ce: nn.Module = SLALoss(args).double()
        P.copy_weights(d.joint_head, criterion_ce.fc1)
        P.copy_weights(d.self_teacher_joint_head, criterion_ce.fc2)
        links.update(link("joint_head.", d.joint_head, criterion_ce.fc1))
        links.update(link("self_teacher_joint_head.", d.self_teacher_joint_head,
                          criterion_ce.fc2))
        criterion_ce.ce = Counted(criterion_ce.ce, rec, ["ce", "self_teacher_ce", "joint_ce",
                                                         "self_teacher_joint_ce"])
        criterion_ce.kd = Counted(criterion_ce.kd, rec, ["sla_sd", "self_teacher_sla_sd"],
                                  args.aux_lamb)
    else:
        criterion_ce = Counted(nn.CrossEntropyLoss(), rec, ["ce", "self_teacher_ce"])
    criterion_kd = Attention(args)
    train_list = nn.ModuleList([model, criterion_ce, criterion_kd, bifpn])
    rec.links = links
    rec.start = {k: get().detach().clone() for k, get in links.items()}
    optimizer = torch.optim.SGD(train_list.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = lr_scheduler(optimizer, args.scheduler, args.schedule, args.lr_decay,
                             args.epoch)
    rec.watch(optimizer)
    kd = Term(criterion_kd, rec, "feat+kd")
    done = 0
    with shims(rec):
        for (epoch, _), group in zip(epochs_of(case), batches(case), strict=True):
            for _ in range(done, epoch):  # the epochs skipped: their schedule steps on
                scheduler.step()
            rec.epoch = epoch
            train(model, bifpn, optimizer, [criterion_ce, kd], [(x, y) for x, y, _ in group],
                  args)
            scheduler.step()
            done = epoch + 1
    return rec


class Counted(nn.Module):
    """Calls ``fn``; its n-th value of a step goes to ``names[n]`` (times ``weight``)."""

    def __init__(self, fn: nn.Module, rec: Recorder, names: list[str],
                 weight: float = 1.0) -> None:
        super().__init__()
        self.fn, self.names, self.weight = fn, names, weight
        object.__setattr__(self, "rec", rec)

    def forward(self, *args: Any) -> Tensor:
        out = self.fn(*args)
        done = sum(name in self.rec.terms for name in self.names)
        self.rec.add(self.names[done], self.weight * float(out.detach()))
        return out


# --------------------------------------------------------------------- SRRL authors
class SRRLTeacher(nn.Module):
    """RepDistiller's network answering the SRRL authors' teacher calls:
    ``net_t(img, is_adain=True)`` -> (last feature map, logits) and ``net_t(x=None,
    feat_s=f)`` -> logits of ``f`` through its pooling and classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor | None = None, is_adain: bool = False,
                feat_s: Tensor | None = None) -> Any:
        if feat_s is not None:
            return self.net.fc(torch.flatten(self.net.avgpool(feat_s), 1))
        feats, logits = self.net(x, is_feat=True)
        return feats[-2], logits


def drive_srrl(case: TS.Case, paths: dict[str, Path], d: Any, teacher: Any,
               student: Any) -> Recorder:
    """The SRRL authors' ``train_imagenet_distillation.py``: its connector
    (``distiller_zoo/AIN.transfer_conv``), SGD over student + connector (line 56),
    ``lr_step_policy`` per epoch (line 60, 69) and ``train`` (lines 90-124), with the
    recipe's CIFAR values for its arguments (``--lr 0.05 --weight_decay 5e-4``, steps at the
    recipe's milestones) and ``--weight 1``."""
    with G.imported_from(paths["repdistiller"], "models", "distiller_zoo", "crd", "helper",
                         "dataset"):
        from models import model_dict  # type: ignore[import-not-found]

        t_name, s_name = TS.PAIRS[case.pair]
        ref_t = model_dict[G.REF_NAMES[t_name]](num_classes=P.NUM_CLASSES).double().eval()
        ref_s = model_dict[G.REF_NAMES[s_name]](num_classes=P.NUM_CLASSES).double()
    P.copy_weights(teacher.net, ref_t)
    links = copied("student.net.", student.net, ref_s)
    cfg = TS.recipe(case)
    with G.imported_from(paths["srrl"], "models", "utils", "distiller_zoo", "dataset"):
        script = load_script(paths["srrl"] / "train_imagenet_distillation.py")
        ain = sys.modules["distiller_zoo.AIN"]
        conector = ain.transfer_conv(ref_s.fc.in_features, ref_t.fc.in_features).double()
        links.update(copied("connector.", d.connector, conector.Connectors))
        rec = Recorder(links)
        script.args = types.SimpleNamespace(weight=1.0, print_freq=10**9)

        def statm_loss(x: Tensor, y: Tensor) -> Tensor:  # their evident intent (module doc)
            value = ain.statm_loss()(x, y)
            rec.add("srrl_fm", float(value.detach()))
            return value
        script.statm_loss = statm_loss
        script.AverageMeter = recording_meter(script.AverageMeter, rec)
        # their top-k metric (utils/utils.py:112) views a transposed tensor, which current
        # PyTorch refuses; it only feeds the progress meters
        script.accuracy = lambda output, target, topk: [torch.zeros(()) for _ in topk]
        trainable_list = nn.ModuleList([ref_s, conector])
        optimizer = torch.optim.SGD(trainable_list.parameters(), lr=cfg.optim.lr,
                                    momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay)
        policy = script.lr_step_policy(cfg.optim.lr, cfg.schedule.milestones,
                                       cfg.schedule.gamma, 0)
        rec.watch(optimizer)
        net_t, net_s = SRRLTeacher(ref_t), SRRLTeacher(ref_s)
        with shims(rec), contextlib.redirect_stdout(sys.stderr):
            for (epoch, _), group in zip(epochs_of(case), batches(case), strict=True):
                rec.epoch = epoch
                policy(optimizer, epoch)
                script.train([(x, y) for x, y, _ in group], net_t, net_s, optimizer,
                             conector, epoch)
    return rec


def load_script(path: Path) -> types.ModuleType:
    """Import a reference script as a module (its ``main`` is not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("parity_ref_srrl_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recording_meter(base: type, rec: Recorder) -> type:
    """The script's ``AverageMeter`` that also records the CE and KD values of each step
    (their meters ``ce`` and ``kd``: CE and statm + softmax regression), updated after the
    step's ``optimizer.step``: into the step just recorded."""
    names = {"ce": "ce", "kd": "srrl_fm+srrl_sr"}

    class Meter(base):  # type: ignore[misc, valid-type]
        def update(self, val: float, n: int = 1) -> None:
            if self.name in names:
                rec.steps[-1]["terms"][names[self.name]] = float(val)
            super().update(val, n)
    return Meter


# --------------------------------------------------------------------- FCFD authors
def drive_fcfd(case: TS.Case, paths: dict[str, Path], d: Any, teacher: Any,
               student: Any) -> Recorder:
    """The FCFD authors' ``classification/cifar/main.py``: ``Trainer.train``'s set-up
    (``MetaModel(model_list, extra_type='bi')``, SGD over ``model.parameters()`` with the
    config's momentum, weight decay and Nesterov, ``MultiStepLR([150, 180, 210])``,
    ``freeze_teacher``) and per epoch ``scheduler.step(epoch)`` then ``train_one_epoch``;
    the pair's ``experiments/cifar/*.yaml`` and ``train_lr*.sh`` values."""
    import yaml

    root = paths["fcfd"] / "classification"
    stub_modules(**{"easydict": {"EasyDict": AttrDict},
                    "torchsummary": {"summary": lambda *a, **k: None}})
    main = load_script_as(root / "cifar" / "main.py", "parity_ref_fcfd_main")
    import models as zoo  # type: ignore[import-not-found]
    from models import meta  # type: ignore[import-not-found]

    t_name, s_name = TS.PAIRS[case.pair]
    ref_t = getattr(zoo, G.FCFD_NAMES[t_name])(num_classes=P.NUM_CLASSES)
    ref_s = getattr(zoo, G.FCFD_NAMES[s_name])(num_classes=P.NUM_CLASSES)
    P.copy_weights(teacher.net, ref_t)
    mm = meta.MetaModel([ref_t, ref_s], "bi", input_size=(1, 3, 32, 32)).double()
    links = copied("student.net.", student.net, ref_s)
    for k in d.b_st:
        links.update(copied(f"b_st.{k}.", d.b_st[k], mm.bridges[int(k) - 1][0][1]))
    for k in d.b_ts:
        links.update(copied(f"b_ts.{k}.", d.b_ts[k], mm.bridges[int(k) - 1][1][0]))
    name = FCFD_CONFIGS[case.pair]
    config = AttrDict(yaml.safe_load((root / "experiments" / "cifar" / name).read_text()))
    config.update(extra_paths=2, extra_type="bi", epochs=240, init_lr=FCFD_LR[case.pair],
                  momentum=0.9, weight_decay=5e-4, nesterov=True, gamma=0.1)
    trainer = object.__new__(main.Trainer)
    trainer.config, trainer.model, trainer.model_num = config, mm, 2
    trainer.output_stages = mm.output_stages
    trainer.loss_ce = nn.CrossEntropyLoss()
    trainer.optimizer = torch.optim.SGD(mm.parameters(), lr=config.init_lr,
                                        momentum=config.momentum,
                                        weight_decay=config.weight_decay,
                                        nesterov=config.nesterov)
    trainer.scheduler = torch.optim.lr_scheduler.MultiStepLR(
        trainer.optimizer, milestones=[150, 180, 210], gamma=config.gamma, last_epoch=-1)
    mm.freeze_teacher()
    rec = Recorder(links)

    def scaler(loss: Tensor, optimizer: torch.optim.Optimizer) -> None:  # NativeScaler, no FP16
        loss.backward()
        optimizer.step()
    trainer.scaler = scaler
    original_kl = trainer._loss_kl
    forced: list[list[list[int]]] = []

    def loss_kl(src: Tensor, target: Tensor, T: float = 1) -> Tensor:  # noqa: N803
        value = original_kl(src, target, T)
        rec.add("kl", float(value.detach()))  # split by path below
        return value
    trainer._loss_kl = loss_kl
    trainer.loss_ce = Term(nn.CrossEntropyLoss(), rec, "ce")
    rec.watch(trainer.optimizer)
    meta.random = types.SimpleNamespace(sample=lambda seq, n: forced.pop(0))
    sampled = TS.fcfd_paths(d.candidates)
    step = 0
    with (shims(rec), contextlib.redirect_stdout(sys.stderr), kl_split(rec, sampled),
          no_cuda_memory()):
        for (epoch, _), group in zip(epochs_of(case), batches(case), strict=True):
            for j in range(len(group)):
                forced.append([fcfd_path(k, delta, mm.n_stages)
                               for k, delta in sampled[step + j]])
            step += len(group)
            rec.epoch = epoch
            trainer.scheduler.step(epoch)
            trainer.train_loader = [(x, y) for x, y, _ in group]
            trainer.train_one_epoch(epoch)
    return rec


FCFD_CONFIGS = {"resnet8x4_from_resnet32x4": "resnet8x4-resnet32x4.yaml",
                "mobilenetv2_from_vgg13": "MobileNetV2-vgg13.yaml"}
FCFD_LR = {"resnet8x4_from_resnet32x4": 0.05,  # experiments/cifar/train_lr0.05.sh
           "mobilenetv2_from_vgg13": 0.01}  # train_lr0.01.sh


def fcfd_path(k: int, delta: int, stages: int) -> list[int]:
    """kdlab's path (k, delta) as the authors' candidate list: the first network (1 student,
    0 teacher) for stages 0..k-1, the other after."""
    first, second = (1, 0) if delta == 1 else (0, 1)
    return [first] * k + [second] * (stages - k)


@contextlib.contextmanager
def no_cuda_memory() -> Iterator[None]:
    """``torch.cuda.max_memory_allocated`` (printed by their epoch) answers 0."""
    saved = torch.cuda.max_memory_allocated
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    try:
        yield
    finally:
        torch.cuda.max_memory_allocated = saved


@contextlib.contextmanager
def kl_split(rec: Recorder, sampled: list[list[tuple[int, int]]]) -> Iterator[None]:
    """The KL values of a step come in the loop's order: the student's to the teacher
    (``kd``), then each sampled path's to the teacher: ``func_kl`` for a path ending in the
    teacher, ``funcp_kl`` otherwise."""
    add, stepped = rec.add, rec.stepped
    paths = iter(sampled)
    kls: list[float] = []

    def add_listing(name: str, value: float) -> None:
        if name == "kl":
            kls.append(float(value))
        else:
            add(name, value)

    def stepped_split(lr: float) -> None:
        sampled = next(paths)
        rec.terms["kd"] = kls[0]
        for (_, delta), value in zip(sampled, kls[1:], strict=True):
            name = "func_kl" if delta == 1 else "funcp_kl"
            rec.terms[name] = rec.terms.get(name, 0.0) + value
        kls.clear()
        stepped(lr)
    rec.add, rec.stepped = add_listing, stepped_split  # type: ignore[method-assign]
    try:
        yield
    finally:
        rec.add, rec.stepped = add, stepped  # type: ignore[method-assign]


def load_script_as(path: Path, name: str) -> types.ModuleType:
    """Import ``path`` as module ``name`` with its folder's parent on sys.path (the FCFD
    authors' main.py adds it itself)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------- driver
DRIVERS = {"fcfd": drive_fcfd, "mdistiller": drive_mdistiller,
           "repdistiller": drive_repdistiller, "simkd": drive_simkd, "frskd": drive_frskd,
           "srrl": drive_srrl}
#: top-level packages each reference brings (forgotten after it ran)
PACKAGES = {"fcfd": ("models", "utils", "data_loader"), "mdistiller": ("mdistiller",),
            "repdistiller": ("models", "distiller_zoo", "crd", "helper", "dataset"),
            "simkd": ("models", "distiller_zoo", "crd", "helper", "dataset"),
            "frskd": ("classification",), "srrl": ()}
ROOTS = {"fcfd": lambda p: p / "classification"}


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """sys.path and the modules as they were: whatever a reference added (the FCFD authors'
    main.py appends its folder to sys.path) is gone for the next one."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]


def reference_trajectory(case: TS.Case, paths: dict[str, Path]) -> Recorder:
    teacher, student = TS.networks(case)
    d = TS.build(case, teacher, student)
    root = ROOTS.get(case.reference, lambda p: p)(paths[case.reference])
    with isolated(), G.imported_from(root, *PACKAGES[case.reference]):
        rec = DRIVERS[case.reference](case, paths, d, teacher, student)
    for k in [k for k in rec.links if TS.excluded(case, k)]:
        del rec.links[k]
    for step in rec.steps:
        step["digest"] = {k: v for k, v in step["digest"].items() if not TS.excluded(case, k)}
    return rec


def compare(case: TS.Case, ref: Recorder) -> dict[str, float]:
    """kdlab's run of the case against the reference's: the largest relative differences
    (terms, digests); SystemExit beyond RTOL."""
    worst = {"terms": 0.0, "weights": 0.0}
    ours = TS.run(case)
    if len(ours) != len(ref.steps):
        raise SystemExit(f"{case.name}: {len(ours)} kdlab steps vs {len(ref.steps)}")
    for i, (mine, theirs) in enumerate(zip(ours, ref.steps, strict=True)):
        if abs(mine["lr"] - theirs["lr"]) > 1e-12 * theirs["lr"]:
            raise SystemExit(f"{case.name} step {i}: LR {mine['lr']} vs {theirs['lr']}")
        for term, value in theirs["terms"].items():
            rel = abs(P.combined(mine["terms"], term) - value) / max(abs(value), 1e-300)
            worst["terms"] = max(worst["terms"], rel)
        total = sum(mine["terms"].values())
        worst["terms"] = max(worst["terms"], abs(total - theirs["total"]) / abs(theirs["total"]))
        if set(mine["digest"]) != set(theirs["digest"]):
            missing = sorted(set(mine["digest"]) ^ set(theirs["digest"]))
            raise SystemExit(f"{case.name}: digests differ in names {missing[:6]}")
        for k, want in theirs["digest"].items():
            worst["weights"] = max(worst["weights"], TS.digest_error(mine["digest"][k], want))
    print(f"{case.name}: max relative difference terms {worst['terms']:.1e}, weights "
          f"{worst['weights']:.1e}", flush=True)
    if max(worst.values()) > TS.RTOL:
        raise SystemExit(f"{case.name} is not step-exact")
    return worst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key in REPOS:
        ap.add_argument(f"--{key}", type=Path, required=True)
    ap.add_argument("--cases", nargs="*", help="only these (default: every case)")
    ap.add_argument("--out", type=Path, default=TS.FIXTURES)
    args = ap.parse_args(argv)
    paths = {k: getattr(args, k) for k in REPOS}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.cases or sorted(TS.CASES):
        case = TS.CASES[name]
        ref = reference_trajectory(case, paths)
        worst = compare(case, ref)
        cfg = TS.recipe(case)
        fixture = {
            "case": name, "method": case.method, "pair": case.pair,
            "networks": list(TS.PAIRS[case.pair]), "batch": case.batch,
            "seeds": P.SEEDS, "dtype": "float64", "plan": TS.epochs(cfg),
            "options": TS.method_options(case),
            "reference_optim": ref.optim,
            "options_reason": case.options_reason, "optim_reason": case.optim_reason,
            "exclude": case.exclude,
            "references": {case.reference: {"repository": REPOS[case.reference],
                                            "commit": G.commit_of(paths[case.reference])}},
            "command": COMMAND + f" --cases {name}",
            "max_relative_difference": worst, "steps": ref.steps,
        }
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
        print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
