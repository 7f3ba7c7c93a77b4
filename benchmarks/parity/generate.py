"""Write kdlab's parity fixtures: every loss term computed by the reference implementations'
own code on the same networks, weights and batch as kdlab (``tests/methods/test_parity.py``).

Usage (each path a checkout of that repository, e.g. ``git archive`` of the commit)::

    python benchmarks/parity/generate.py \
        --repdistiller refs/RepDistiller \
        --mdistiller refs/mdistiller \
        --kdzoo refs/Knowledge-Distillation-Zoo \
        --fcfd refs/FCFD \
        --srrl refs/KD_SRRL \
        --simkd refs/SimKD \
        --frskd refs/FRSKD \
        [--out tests/fixtures/parity] [--methods simkd frskd frskd_sla --update]

Nothing of the references is copied into kdlab: their modules are imported from those paths
while this script runs. Their commit is read with ``git rev-parse HEAD`` or from a file
``COMMIT`` at the checkout's root. Two shims keep them importable on a CPU-only machine
without their extra dependencies: RepDistiller's negative sampler's ``.cuda()`` is a no-op
(the rows are passed in explicitly anyway), and ``scipy.stats.norm.cdf`` (mdistiller's OFD
margins; imported, unused, by the FRSKD authors' ``distill_loss`` package) is the normal CDF
from ``math.erf``.

For every pair of ``parity_setup.PAIRS`` and every method with a reference, the script builds
kdlab's distiller (the pair's CIFAR-100 recipe options, extras from a seed), copies the
networks' and the method's own weights into the reference's modules, computes the
reference's weighted terms, and records them with kdlab's value. A term whose difference is
intentional is marked ``match: false`` with the reason (benchmarks/results/parity.md).
``--methods ... --update`` recomputes only those methods and keeps every other entry of the
existing fixtures as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_setup as P  # noqa: E402

REPOS = {
    "repdistiller": "github.com/HobbitLong/RepDistiller",
    "mdistiller": "github.com/megvii-research/mdistiller",
    "kdzoo": "github.com/AberHu/Knowledge-Distillation-Zoo",
    "fcfd": "github.com/LiuDongyang6/FCFD",
    "srrl": "github.com/jingyang2017/KD_SRRL",
    "simkd": "github.com/DefangChen/SimKD",
    "frskd": "github.com/MingiJi/FRSKD",
}
#: kdlab model name -> RepDistiller's model_dict name
REF_NAMES = {"resnet32x4": "resnet32x4", "resnet8x4": "resnet8x4", "vgg13": "vgg13",
             "mobilenetv2": "MobileNetV2"}
#: terms that differ on purpose, by (method, pair or "*"), with the reason
STAGE_CUT = ("kdlab's zoo cuts vgg/mobilenetv2 into FCFD's stages: a vgg stage ends before its "
             "ReLU (RepDistiller's feature list is after it) and mobilenetv2's last stage "
             "includes conv2 (RepDistiller's f4 is before it)")
INTENTIONAL = {
    ("fitnet", "mobilenetv2_from_vgg13", "hint"): STAGE_CUT,
    ("at", "mobilenetv2_from_vgg13", "at"): STAGE_CUT,
    ("vid", "mobilenetv2_from_vgg13", "vid"): STAGE_CUT,
    ("sp", "mobilenetv2_from_vgg13", "sp"): STAGE_CUT,
}
JOINT_HEAD = ("kdlab's student joint head reads the student's pooled penultimate vector (what "
              "its classifier reads, after conv2's ReLU on mobilenetv2); the authors' fc1 pools "
              "the last stage output, which their own networks return after its ReLU (the same "
              "vector) but which the zoo's mobilenetv2 stage cut, handed to their code here, "
              "ends before that ReLU")
for _term in ("joint_ce", "sla_sd", "kd"):
    INTENTIONAL[("frskd_sla", "mobilenetv2_from_vgg13", _term)] = JOINT_HEAD


def commit_of(path: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        marker = path / "COMMIT"
        if marker.exists():
            return marker.read_text().strip()
        raise SystemExit(
            f"cannot tell the commit of {path}: no git checkout, no COMMIT file") from None


@contextlib.contextmanager
def imported_from(path: Path, *packages: str) -> Iterator[None]:
    """``path`` first on sys.path; the named top-level packages forgotten afterwards (the
    references share names such as ``models``)."""
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for name in list(sys.modules):
            if name.split(".")[0] in packages:
                del sys.modules[name]


def ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.detach(), y))


# --------------------------------------------------------------------- RepDistiller
def repdistiller_terms(method: str, pair: str, nets: dict, d: Any, x: torch.Tensor,
                       y: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
    """The CRD benchmark's weighted terms (scripts/run_cifar_distill.sh weights)."""
    from distiller_zoo import (  # type: ignore[import-not-found]
        Attention,
        Correlation,
        DistillKL,
        HintLoss,
        RKDLoss,
        Similarity,
        VIDLoss,
    )
    from models.util import ConvReg, LinearEmbed  # type: ignore[import-not-found]

    ref_t, ref_s = nets["ref_teacher"], nets["ref_student"]
    ref_s.train()
    feat_s, logit_s = ref_s(x, is_feat=True)
    with torch.no_grad():
        feat_t, logit_t = ref_t(x, is_feat=True)
    if method == "kd":  # -r 0.1 -a 0.9 -b 0
        return {"ce": 0.1 * ce(logit_s, y), "kd": 0.9 * float(DistillKL(4)(logit_s, logit_t))}
    out = {"ce": ce(logit_s, y)}
    if method == "fitnet":  # -a 0 -b 100, hint_layer 2
        torch.manual_seed(P.SEEDS["extras"])
        reg = ConvReg(feat_s[2].shape, feat_t[2].shape).double().train()
        if d.cfg.regressor == "convreg":  # the same module: kdlab's weights
            P.copy_weights(d.bridge, reg)
        out["hint"] = 100 * float(HintLoss()(reg(feat_s[2]), feat_t[2]))
    elif method == "at":  # -a 0 -b 1000
        out["at"] = 1000 * float(sum(Attention()(feat_s[1:-1], feat_t[1:-1])))
    elif method == "sp":  # -a 0 -b 3000
        out["sp"] = 3000 * float(sum(Similarity()([feat_s[-2]], [feat_t[-2]])))
    elif method == "cc":  # -a 0 -b 0.02, 128-d LinearEmbed of both
        embed_s = LinearEmbed(feat_s[-1].shape[1], 128).double()
        embed_t = LinearEmbed(feat_t[-1].shape[1], 128).double()
        P.copy_weights(d.projection, embed_s)
        P.copy_weights(d.teacher_projection, embed_t)
        out["cc"] = 0.02 * float(Correlation()(embed_s(feat_s[-1]), embed_t(feat_t[-1])))
    elif method == "vid":  # -a 0 -b 1, feat[1:-1]
        total = 0.0
        for i, (fs, ft) in enumerate(zip(feat_s[1:-1], feat_t[1:-1], strict=True)):
            torch.manual_seed(P.SEEDS["extras"] + i)
            crit = VIDLoss(fs.shape[1], ft.shape[1], ft.shape[1]).double()
            with contextlib.suppress(ValueError):  # a stage cut apart: its own (seeded) init
                P.copy_weights(d.regressors[i], crit)
            total += float(crit(fs, ft))
        out["vid"] = total
    elif method == "rkd":  # -a 0 -b 1 on feat[-1]
        out["rkd_distance"] = float(RKDLoss(25, 0)(feat_s[-1], feat_t[-1]))
        out["rkd_angle"] = float(RKDLoss(0, 50)(feat_s[-1], feat_t[-1]))
    elif method == "crd":  # -a 0 -b 0.8
        import crd.memory  # type: ignore[import-not-found]
        from crd.criterion import CRDLoss  # type: ignore[import-not-found]

        crd.memory.AliasMethod.cuda = lambda self: None  # CPU-only: rows are passed in
        opt = types.SimpleNamespace(
            s_dim=feat_s[-1].shape[1], t_dim=feat_t[-1].shape[1], feat_dim=d.cfg.feat_dim,
            nce_k=d.cfg.num_negatives, nce_t=d.cfg.temperature, nce_m=d.cfg.momentum,
            n_data=P.CRD_TRAIN_SIZE)
        old_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # their params buffer (T, Z) else float32
        try:
            crit = CRDLoss(opt).double()
        finally:
            torch.set_default_dtype(old_dtype)
        P.copy_weights(d.embed_student, crit.embed_s)
        P.copy_weights(d.embed_teacher, crit.embed_t)
        with torch.no_grad():  # kdlab's banks, before kdlab's step updates them
            crit.contrast.memory_v1.copy_(d.memory.bank_student)
            crit.contrast.memory_v2.copy_(d.memory.bank_teacher)
        rows = P.negatives(index, P.CRD_TRAIN_SIZE, d.cfg.num_negatives)
        out["crd"] = 0.8 * float(crit(feat_s[-1], feat_t[-1], index, rows))
    else:
        raise KeyError(method)
    return out


def repdistiller_nets(teacher: Any, student: Any, pair: str) -> dict:
    from models import model_dict  # type: ignore[import-not-found]

    t_name, s_name = P.PAIRS[pair]
    ref_t = model_dict[REF_NAMES[t_name]](num_classes=P.NUM_CLASSES).double()
    ref_s = model_dict[REF_NAMES[s_name]](num_classes=P.NUM_CLASSES).double()
    P.copy_weights(teacher.net, ref_t)
    P.copy_weights(student.net, ref_s)
    return {"ref_teacher": ref_t.eval(), "ref_student": ref_s}


# --------------------------------------------------------------------- mdistiller
def _norm_cdf_shim() -> None:
    """mdistiller's OFD imports scipy.stats.norm for the normal CDF only."""
    if "scipy" in sys.modules:
        return
    stats = types.ModuleType("scipy.stats")
    stats.norm = types.SimpleNamespace(cdf=lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))
    scipy = types.ModuleType("scipy")
    scipy.stats = stats
    sys.modules["scipy"], sys.modules["scipy.stats"] = scipy, stats


def mdistiller_terms(method: str, pair: str, teacher: Any, student: Any, d: Any,
                     x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    _norm_cdf_shim()
    if method == "dkd":
        from mdistiller.distillers.DKD import dkd_loss  # type: ignore[import-not-found]

        student.train()
        logits = student(x)
        with torch.no_grad():
            t_logits = teacher(x)
        c = d.cfg  # CIFAR-100 config: CE 1, alpha 1, beta 8, T 4, warm-up 20 (epoch 240)
        warm = min(240 / c.warmup, 1.0)
        return {"ce": c.ce_weight * ce(logits, y),
                "dkd": warm * float(dkd_loss(logits, t_logits, y, c.alpha, c.beta,
                                             c.temperature))}
    from mdistiller.models.cifar import resnet  # type: ignore[import-not-found]

    t_name, s_name = P.PAIRS[pair]
    ref_t = getattr(resnet, t_name)(num_classes=P.NUM_CLASSES).double()
    ref_s = getattr(resnet, s_name)(num_classes=P.NUM_CLASSES).double()
    P.copy_weights(teacher.net, ref_t)
    P.copy_weights(student.net, ref_s)
    if method == "reviewkd":  # mdistiller's CIFAR-100 resnet32x4 -> resnet8x4 configuration
        from mdistiller.distillers.ReviewKD import (  # type: ignore[import-not-found]
            ReviewKD,
        )

        # REVIEWKD_WEIGHT 5.0: configs/cifar100/reviewkd.yaml (also the ReviewKD authors'
        # --kd-loss-weight for this pair); the rest is mdistiller/engine/cfg.py's defaults
        cfg = types.SimpleNamespace(REVIEWKD=types.SimpleNamespace(
            CE_WEIGHT=1.0, REVIEWKD_WEIGHT=5.0, WARMUP_EPOCHS=20, SHAPES=[1, 8, 16, 32],
            OUT_SHAPES=[1, 8, 16, 32], IN_CHANNELS=[64, 128, 256, 256],
            OUT_CHANNELS=[64, 128, 256, 256], STU_PREACT=False, MAX_MID_CHANNEL=512))
        rkd = ReviewKD(ref_s, ref_t, cfg).double()
        for i, abf in enumerate(d.abfs):  # theirs are kept deepest first
            P.copy_weights(abf, rkd.abfs[len(d.abfs) - 1 - i])
        rkd.train()
        rkd.teacher.eval()
        _, losses = rkd.forward_train(image=x, target=y, epoch=240)
        return {"ce": float(losses["loss_ce"]), "review": float(losses["loss_kd"])}
    if method == "ofd":
        from mdistiller.distillers.OFD import OFD  # type: ignore[import-not-found]

        cfg = types.SimpleNamespace(OFD=types.SimpleNamespace(
            LOSS=types.SimpleNamespace(CE_WEIGHT=1.0, FEAT_WEIGHT=0.001),
            CONNECTOR=types.SimpleNamespace(KERNEL_SIZE=1)))
        ofd = OFD(ref_s, ref_t, cfg).double()
        for i, conn in enumerate(d.connectors):
            P.copy_weights(conn, ofd.connectors.connectors[i])
        ofd.train()  # mdistiller's OFD keeps its teacher in train mode too
        _, losses = ofd.forward_train(image=x, target=y)
        return {"ce": float(losses["loss_ce"]), "ofd": float(losses["loss_kd"])}
    raise KeyError(method)


# --------------------------------------------------------------------- KD-Zoo
KDZOO_PATH: list[Path] = []


def load_file(path: Path) -> types.ModuleType:
    """Import one file as a module (the KD-Zoo package's __init__ imports files it lacks)."""
    spec = importlib.util.spec_from_file_location(f"parity_ref_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kdzoo_terms(pair: str, nets: dict, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """IRG as the Knowledge-Distillation-Zoo (weights 0.1 / 5 / 5, lambda_kd 1) on the last
    two stage outputs, the pooled feature and the logits (its rb2, rb3, feat, out)."""
    IRG = load_file(KDZOO_PATH[0] / "kd_losses" / "irg.py").IRG  # noqa: N806 - a class

    ref_t, ref_s = nets["ref_teacher"], nets["ref_student"]
    ref_s.train()
    feat_s, logit_s = ref_s(x, is_feat=True)
    with torch.no_grad():
        feat_t, logit_t = ref_t(x, is_feat=True)
    args_s = [feat_s[-3], feat_s[-2], feat_s[-1], logit_s]
    args_t = [feat_t[-3], feat_t[-2], feat_t[-1], logit_t]
    return {"ce": ce(logit_s, y),
            "irg_vertex": float(IRG(0.1, 0.0, 0.0)(args_s, args_t)),
            "irg_edge": float(IRG(0.0, 5.0, 0.0)(args_s, args_t)),
            "irg_transform": float(IRG(0.0, 0.0, 5.0)(args_s, args_t))}


# --------------------------------------------------------------------- SRRL authors
def srrl_terms(nets: dict, d: Any, x: torch.Tensor, y: torch.Tensor,
               path: Path) -> dict[str, float]:
    """The SRRL authors' connector (``transfer_conv``) and feature loss (``statm_loss``,
    which their ImageNet script calls as ``statm_loss(feat_s, feat_t)``: that passes the
    tensors to the module's constructor and raises ``TypeError``; used here as the evident
    intent, ``statm_loss()(feat_s, feat_t)``) on the
    last feature maps; softmax regression as their script: the teacher's own pooling and
    classifier on the connected student feature, MSE to the teacher's logits; weights 1."""
    ain = load_file(path / "distiller_zoo" / "AIN.py")
    ref_t, ref_s = nets["ref_teacher"], nets["ref_student"]
    ref_s.train()
    feat_s, logit_s = ref_s(x, is_feat=True)
    with torch.no_grad():
        feat_t, logit_t = ref_t(x, is_feat=True)
    conn = ain.transfer_conv(feat_s[-2].shape[1], feat_t[-2].shape[1]).double().train()
    P.copy_weights(d.connector, conn.Connectors)
    f = conn(feat_s[-2])
    regressed = ref_t.fc(torch.flatten(ref_t.avgpool(f), 1))
    return {"ce": ce(logit_s, y),
            "srrl_fm": d.cfg.fm_weight * float(ain.statm_loss()(f, feat_t[-2])),
            "srrl_sr": d.cfg.sr_weight * float(F.mse_loss(regressed, logit_t))}


# --------------------------------------------------------------------- FCFD authors
FCFD_NAMES = {"resnet32x4": "resnet32x4", "resnet8x4": "resnet8x4", "vgg13": "vgg13",
              "mobilenetv2": "MobileNetV2"}


def _copy_bridge(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """kdlab's bridge (conv, BN, [LeakyReLU]) into the authors' (their stride-2 and
    transposed convs have a bias: kdlab's with ``bridge_init: authors``, else zero, which the
    BN after it cancels anyway)."""
    with torch.no_grad():
        theirs[0].weight.copy_(ours[0].weight)
        if theirs[0].bias is not None:
            if ours[0].bias is not None:
                theirs[0].bias.copy_(ours[0].bias)
            else:
                theirs[0].bias.zero_()
    P.copy_weights(ours[1], theirs[1])
    if len(ours) != len(theirs):
        raise SystemExit("bridge layouts differ (LeakyReLU on one side only)")


def fcfd_terms(pair: str, teacher: Any, student: Any, d: Any, x: torch.Tensor,
               y: torch.Tensor) -> dict[str, float]:
    """The authors' MetaModel (``classification/models/meta.py``) runs the teacher, the
    student and every candidate path (their ``bi`` set) with kdlab's bridges; the terms are
    then assembled as their training loop does (``cifar/main.py``, ``train_one_epoch``, which
    needs CUDA and their data pipeline to run as is): per stage after the first, MSE of every
    other feature in the teacher's space to the pure teacher feature, plus at the last stage
    the same after ReLU + global average pool, times ``weight_l2``; CE and KL(student ||
    teacher) for the student; KL(path || teacher) per mixed path; KL at temperature T,
    batchmean, x T^2. The L2 terms come as one number (kdlab's ``app + func_l2``)."""
    import models as zoo  # type: ignore[import-not-found]
    from models import meta  # type: ignore[import-not-found]

    t_name, s_name = P.PAIRS[pair]
    ref_t = getattr(zoo, FCFD_NAMES[t_name])(num_classes=P.NUM_CLASSES)
    ref_s = getattr(zoo, FCFD_NAMES[s_name])(num_classes=P.NUM_CLASSES)
    P.copy_weights(teacher.net, ref_t)
    P.copy_weights(student.net, ref_s)
    mm = meta.MetaModel([ref_t, ref_s], "bi", input_size=(1, 3, 32, 32))
    for k in d.b_st:
        _copy_bridge(d.b_st[k], mm.bridges[int(k) - 1][0][1])
    for k in d.b_ts:
        _copy_bridge(d.b_ts[k], mm.bridges[int(k) - 1][1][0])
    mm.double().train()  # their model.train(): the frozen teacher on batch statistics too
    meta.random = types.SimpleNamespace(sample=lambda seq, n: list(seq)[:n])  # all, in order
    paths = [[str(m) for m in p] for p in mm.extra_path_list]
    c = d.cfg
    outputs, inters = mm(x, extra_path_num=len(paths))
    l2 = 0.0
    for stage, per_model in enumerate(inters):
        feats = list(per_model[0].values())
        target = feats[0].detach()
        l2 += sum(float(F.mse_loss(v, target)) for v in feats[1:])
        if stage == len(inters) - 1:
            def pooled(f: torch.Tensor) -> torch.Tensor:
                return F.adaptive_avg_pool2d(F.relu(f), 1).flatten(1)
            l2 += sum(float(F.mse_loss(pooled(v), pooled(target))) for v in feats[1:])

    def kl(src: torch.Tensor, tgt: torch.Tensor) -> float:
        t = c.temperature
        return float(F.kl_div(F.log_softmax(src / t, 1), F.softmax(tgt.detach() / t, 1),
                              reduction="batchmean") * t * t)

    out = {"ce": ce(outputs[1], y), "kd": c.kd_weight * kl(outputs[1], outputs[0]),
           "app+func_l2": c.app_weight * l2, "func_kl": 0.0, "funcp_kl": 0.0}
    for path, logits in zip(paths, outputs[2:], strict=True):
        name = "func_kl" if path[-1] == "0" else "funcp_kl"  # ends in the teacher: <k, 1>
        weight = c.func_kl_weight if name == "func_kl" else c.funcp_kl_weight
        out[name] += weight * kl(logits, outputs[0])
    return out


# --------------------------------------------------------------------- SimKD authors
def simkd_terms(pair: str, teacher: Any, student: Any, d: Any,
                x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """The SimKD authors' networks (their ``models`` zoo, RepDistiller's layout) and their
    ``SimKD`` module (``models/util.py``) with kdlab's projector weights, called as their
    training loop does (``helper/loops.py``, ``train_distill``: ``feat_s[-2]``,
    ``feat_t[-2]`` and the teacher's classifier ``get_feat_modules()[-1]``; the teacher in
    eval mode); the loss as their CIFAR script (``scripts/run_distill.sh``: ``-c 0 -d 0
    -b 1``): MSE of the projected student feature to the teacher's. Also returns their
    prediction through the reused classifier (what kdlab's composite student outputs)."""
    from models.util import SimKD  # type: ignore[import-not-found]

    from models import model_dict  # type: ignore[import-not-found]

    t_name, s_name = P.PAIRS[pair]
    ref_t = model_dict[REF_NAMES[t_name]](num_classes=P.NUM_CLASSES).double().eval()
    ref_s = model_dict[REF_NAMES[s_name]](num_classes=P.NUM_CLASSES).double().train()
    P.copy_weights(teacher.net, ref_t)
    P.copy_weights(student.net, ref_s)
    feat_s, _ = ref_s(x, is_feat=True)
    with torch.no_grad():
        feat_t, _ = ref_t(x, is_feat=True)
    module = SimKD(s_n=feat_s[-2].shape[1], t_n=feat_t[-2].shape[1],
                   factor=d.cfg.factor).double().train()
    P.copy_weights(d.projector, module.transfer)
    trans_s, trans_t, pred = module(feat_s[-2], feat_t[-2], ref_t.get_feat_modules()[-1])
    loss = float(F.mse_loss(trans_s, trans_t).detach())
    return {"simkd": d.cfg.feature_weight * loss}, pred.detach()


# --------------------------------------------------------------------- FRSKD authors
class _StagesOf(torch.nn.Module):
    """A RepDistiller network as the FRSKD authors' models answer: ``(feats, logits)`` with
    ``feats`` the stage outputs after the stem as kdlab cuts them (``f1..f3`` of resnet8x4;
    for mobilenetv2 ``f1..f3`` and conv2's convolution and BatchNorm on ``f4``: the zoo's
    last stage includes conv2 and ends before its ReLU)."""

    def __init__(self, net: torch.nn.Module, pair: str) -> None:
        super().__init__()
        self.net, self.mobile = net, P.PAIRS[pair][1] == "mobilenetv2"

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, logits = self.net(x, is_feat=True)
        if self.mobile:
            return [*feats[1:4], self.net.conv2[:2](feats[4])], logits
        return feats[1:-1], logits


def _copy_bifpnc(ours: Any, theirs: torch.nn.Module) -> None:
    """kdlab's BiFPNc into the authors' (``models/bifpnc.py``), node by node: lateral ->
    ``lat_conv``, bottom-up lateral -> ``lat_conv2``, top-down fusion weights / resample /
    separable convs -> ``up_weight`` / ``up_sample[.][1]`` / ``up_conv``, bottom-up ones ->
    ``down_weight`` / ``down_sample[.][1]`` / ``down_conv``, classifier -> ``fc``."""
    for mine, their in zip(ours.layers, theirs.layers, strict=True):
        for i, m in enumerate(mine.lateral):
            P.copy_weights(m, their.lat_conv[i])
        for i in range(len(mine.bu_lateral)):
            P.copy_weights(mine.bu_lateral[i], their.lat_conv2[i])
            P.copy_weights(mine.bu_proj[i], their.down_sample[i][1])
            P.copy_weights(mine.bu_conv[i], their.down_conv[i])
            with torch.no_grad():
                their.down_weight[i].copy_(mine.bu_fuse[i].weight)
        for i in range(len(mine.td_proj)):
            P.copy_weights(mine.td_proj[i], their.up_sample[i][1])
            P.copy_weights(mine.td_conv[i], their.up_conv[i])
            with torch.no_grad():
                their.up_weight[i].copy_(mine.td_fuse[i].weight)
    P.copy_weights(ours.fc, theirs.fc)


class _Recorded(torch.nn.Module):
    """Calls ``loss`` and keeps each value (to read the terms the authors' SLA loss sums)."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss, self.values = loss, []

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        value = self.loss(*args)
        self.values.append(float(value.detach()))
        return value


def frskd_terms(method: str, pair: str, nets: dict, d: Any, x: torch.Tensor,
                y: torch.Tensor) -> dict[str, float]:
    """The FRSKD authors' self-teacher (``BiFPNc``) and losses (``distill_loss``: ``att``'s
    ``Attention``, ``sla``'s ``SLALoss``) with kdlab's weights, on RepDistiller's student
    (the authors' zoo has no resnet8x4 / mobilenetv2; :class:`_StagesOf`), both in train
    mode as their ``utils.train``. FRSKD: their loop's non-SLA branch (CE of both heads, then
    ``Attention`` at ``alpha`` and at ``beta`` separately). FRSKD+SLA (``--aux sla``): their
    ``SLALoss`` forward with kdlab's joint heads as its ``fc1`` / ``fc2``, each CE and KL it
    sums read in call order, then ``Attention`` on the concatenated outputs it returns."""
    _norm_cdf_shim()
    from classification.distill_loss.AT import Attention  # type: ignore[import-not-found]
    from classification.distill_loss.sla import SLALoss  # type: ignore[import-not-found]
    from classification.models.bifpnc import BiFPNc  # type: ignore[import-not-found]

    c = d.cfg
    model = _StagesOf(nets["ref_student"], pair).train()
    channels = d.self_teacher.in_channels
    width = int(c.width)
    if width != c.width or c.repeat != 1:
        raise SystemExit("the authors' BiFPNc takes an integer width (and 1 layer here)")
    args = types.SimpleNamespace(
        repeat=c.repeat, depth=[c.depth] * 3, width=width, num_features=len(channels),
        network_channels=channels, num_classes=P.NUM_CLASSES, temperature=c.temperature,
        alpha=c.alpha, beta=c.beta, distill="att", aux_lamb=getattr(c, "sla_weight", 0.0))
    bifpn = BiFPNc(channels, P.NUM_CLASSES, args).double().train()
    _copy_bifpnc(d.self_teacher, bifpn)
    kd = Attention(types.SimpleNamespace(**{**vars(args), "beta": 0.0}))
    feat = Attention(types.SimpleNamespace(**{**vars(args), "alpha": 0.0}))
    if method == "frskd":
        feats, outputs = model(x)
        bi_feats, bi_outputs = bifpn(feats[-args.num_features:])
        return {"ce": ce(outputs, y), "self_teacher_ce": ce(bi_outputs, y),
                "kd": float(kd(outputs, bi_outputs, feats, bi_feats).detach()),
                "feat": float(feat(outputs, bi_outputs, feats, bi_feats).detach())}
    sla = SLALoss(args).double().train()
    P.copy_weights(d.joint_head, sla.fc1)
    P.copy_weights(d.self_teacher_joint_head, sla.fc2)
    sla.ce, sla.kd = _Recorded(sla.ce), _Recorded(sla.kd)
    outputs, bi_outputs, feats, bi_feats, total = sla(model, bifpn, x, y)
    ces, kls = sla.ce.values, sla.kd.values  # in their order: model, bifpn, fc1, fc2
    if abs(sum(ces) + args.aux_lamb * sum(kls) - float(total.detach())) > 1e-9 * abs(sum(ces)):
        raise SystemExit("the authors' SLALoss sums other terms than recorded")
    return {"ce": ces[0], "self_teacher_ce": ces[1], "joint_ce": ces[2],
            "self_teacher_joint_ce": ces[3], "sla_sd": args.aux_lamb * kls[0],
            "self_teacher_sla_sd": args.aux_lamb * kls[1],
            "kd": float(kd(outputs, bi_outputs, feats, bi_feats).detach()),
            "feat": float(feat(outputs, bi_outputs, feats, bi_feats).detach())}


# --------------------------------------------------------------------- driver
METHODS: dict[str, str] = {  # method -> reference key
    "kd": "repdistiller", "fitnet": "repdistiller", "at": "repdistiller", "sp": "repdistiller",
    "cc": "repdistiller", "vid": "repdistiller", "rkd": "repdistiller", "crd": "repdistiller",
    "dkd": "mdistiller", "ofd": "mdistiller", "reviewkd": "mdistiller", "irg": "kdzoo",
    "fcfd": "fcfd", "srrl": "srrl", "simkd": "simkd", "frskd": "frskd", "frskd_sla": "frskd",
}
#: methods the cross-architecture pair is not checked for (the reference has no such code)
SKIP = {
    ("ofd", "mobilenetv2_from_vgg13"),  # mdistiller's OFD code here is its CIFAR ResNets'
    ("reviewkd", "mobilenetv2_from_vgg13"),  # (its configuration is the ResNet pair's)
    # SRRL's connector reads the last feature map: RepDistiller's mobilenetv2 has no conv2
    # in its feature list (160 channels, the zoo's last stage 1280): nothing to copy
    ("srrl", "mobilenetv2_from_vgg13"),
    # the KD-Zoo's IRG-t halves channels once (a 2x gap): mobilenetv2's 48 -> 160 fails there
    ("irg", "mobilenetv2_from_vgg13"),
    # SimKD projects feat[-2]: the SimKD authors' mobilenetv2 gives it before conv2 (160
    # channels), the zoo's last stage includes conv2 (1280): the projectors differ in shape
    ("simkd", "mobilenetv2_from_vgg13"),
}


def check_simkd_prediction(d: Any, x: torch.Tensor, y: torch.Tensor,
                           pred: torch.Tensor) -> None:
    """kdlab's SimKD logits (its composite student) must be the authors' prediction through
    the reused teacher classifier (checked here, not stored: no loss term carries them)."""
    logits, _ = d(x, y)
    if not torch.allclose(logits.detach(), pred, rtol=1e-8, atol=1e-10):
        raise SystemExit("SimKD: kdlab's logits differ from the authors' reused-classifier "
                         f"prediction (max difference {(logits - pred).abs().max():.3g})")


def record(method: str, pair: str, ref: dict[str, float], ours: dict[str, float]) -> dict:
    ours = {name: P.combined(ours, name) for name in ref}
    if set(ref) != set(ours):
        raise SystemExit(f"{method} on {pair}: reference terms {sorted(ref)} vs kdlab "
                         f"{sorted(ours)}")
    terms = {}
    for name, value in ref.items():
        reason = (INTENTIONAL.get((method, pair, name)) or INTENTIONAL.get((method, "*", name)))
        rel = abs(ours[name] - value) / max(abs(value), 1e-300)
        if reason is None and rel > 1e-5:
            raise SystemExit(f"{method} on {pair}, term {name}: kdlab {ours[name]!r} vs "
                             f"reference {value!r} (relative {rel:.2e}) and no reason recorded")
        terms[name] = {"reference": value, "kdlab": ours[name], "match": reason is None}
        if reason:
            terms[name]["reason"] = reason
    return terms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repdistiller", type=Path, required=True)
    ap.add_argument("--mdistiller", type=Path, required=True)
    ap.add_argument("--kdzoo", type=Path, help="needed unless --methods leaves irg out")
    ap.add_argument("--fcfd", type=Path, required=True)
    ap.add_argument("--srrl", type=Path, required=True)
    ap.add_argument("--simkd", type=Path, required=True)
    ap.add_argument("--frskd", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=P.FIXTURES)
    ap.add_argument("--methods", nargs="*", help="only these (for a look; use --out elsewhere)")
    ap.add_argument("--update", action="store_true",
                    help="with --methods: replace only those entries of the existing fixtures")
    args = ap.parse_args(argv)
    paths = {"repdistiller": args.repdistiller, "mdistiller": args.mdistiller,
             "kdzoo": args.kdzoo, "fcfd": args.fcfd, "srrl": args.srrl,
             "simkd": args.simkd, "frskd": args.frskd}
    if args.kdzoo is None:
        if not args.update or "irg" in (args.methods or ["irg"]):
            raise SystemExit("--kdzoo is needed for irg (or use --methods ... --update)")
        del paths["kdzoo"]
    KDZOO_PATH[:] = [args.kdzoo]
    refs = {k: {"repository": REPOS[k], "commit": commit_of(p)} for k, p in paths.items()}
    command = ("python benchmarks/parity/generate.py --repdistiller <RepDistiller checkout> "
               "--mdistiller <mdistiller checkout> --kdzoo <Knowledge-Distillation-Zoo checkout> "
               "--fcfd <FCFD checkout> --srrl <KD_SRRL checkout> --simkd <SimKD checkout> "
               "--frskd <FRSKD checkout>")
    args.out.mkdir(parents=True, exist_ok=True)
    for pair, (t_name, s_name) in P.PAIRS.items():
        teacher = P.seeded_network(t_name, P.SEEDS["teacher"])
        student = P.seeded_network(s_name, P.SEEDS["student"])
        x, y, index = P.batch()
        with imported_from(paths["repdistiller"], "models", "distiller_zoo", "crd", "helper",
                           "dataset"):
            nets = repdistiller_nets(teacher, student, pair)
        entries: dict[str, Any] = {}
        for method, key in METHODS.items():
            if (method, pair) in SKIP or (args.methods and method not in args.methods):
                continue
            d = P.build(method, pair, teacher, student)
            if key == "repdistiller":
                with imported_from(paths[key], "models", "distiller_zoo", "crd", "helper",
                                   "dataset"):
                    ref = repdistiller_terms(method, pair, nets, d, x, y, index)
            elif key == "mdistiller":
                with imported_from(paths[key], "mdistiller"):
                    ref = mdistiller_terms(method, pair, teacher, student, d, x, y)
            elif key == "srrl":
                ref = srrl_terms(nets, d, x, y, paths[key])
            elif key == "fcfd":
                with imported_from(paths[key] / "classification", "models", "utils"):
                    ref = fcfd_terms(pair, teacher, student, d, x, y)
            elif key == "simkd":
                with imported_from(paths[key], "models", "helper", "distiller_zoo", "crd",
                                   "dataset"):
                    ref, pred = simkd_terms(pair, teacher, student, d, x)
                check_simkd_prediction(d, x, y, pred)
            elif key == "frskd":
                with imported_from(paths[key], "classification"):
                    ref = frskd_terms(method, pair, nets, d, x, y)
            else:
                ref = kdzoo_terms(pair, nets, x, y)
            ours = P.kdlab_terms(method, d, x, y, index)
            entries[method] = {"reference": key, "options": P.options(method, pair),
                               "terms": record(method, pair, ref, ours)}
            print(pair, method, {k: f"{v['reference']:.6g}" for k, v in
                                 entries[method]["terms"].items()}, flush=True)
        fixture = {
            "pair": pair, "teacher": t_name, "student": s_name, "num_classes": P.NUM_CLASSES,
            "seeds": P.SEEDS, "batch": P.BATCH, "dtype": "float64",
            "crd": {"train_size": P.CRD_TRAIN_SIZE, **P.CRD_OVERRIDES},
            "references": refs, "command": command, "methods": entries,
        }
        path = args.out / f"{pair}.json"
        if args.update:
            old = json.loads(path.read_text())
            fixture["methods"] = {**old["methods"], **entries}
            fixture["references"] = {**old["references"], **refs}
        path.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    main()
