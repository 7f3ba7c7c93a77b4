"""kdlab's SKD and CWD recipes (CIRKD's settings) step by step against CIRKD's own training
step: CIRKD's loss modules, its SAGAN critic and its loop order (winycg/CIRKD @ 48eb81b,
``train_kd.py:313-376``), on the same networks and weights, in float64.

Usage (the path a checkout of CIRKD @ 48eb81b, e.g. ``git archive`` of the commit)::

    python benchmarks/parity/cirkd_trajectory.py --cirkd /path/to/CIRKD [--steps 5]

Nothing of CIRKD is copied into kdlab: its ``losses`` and ``utils/sagan.py`` are imported
from that path while this script runs. The networks are kdlab's small CPU pair (``seg_resnet20``
-> ``seg_resnet8``, 3 x 256 x 256 inputs, 64 x 64 score maps so that CIRKD's critic has its
four strided convolutions; CIRKD's own networks equal kdlab's ``*_cirkd`` ones, which
``tests/tasks/segmentation/test_cirkd_models.py`` checks by names and shapes); both sides get
copies of the same weights, kdlab's critic is copied into CIRKD's ``Discriminator`` (weights,
SAGAN ``u, v``), dropout is off. kdlab's side is its method with the recipe's settings, its
optimisers (:class:`~kdlab.training.optimisation.Optimisation`: SGD 0.02 poly over the run,
the critic's Adam at a constant LR) and the trainer's step (``kdlab.training.step``).
CIRKD's side is its loop: student loss and SGD step (``adjust_lr``), then the critic's.
Printed: per step, kdlab's and CIRKD's student loss and the largest relative weight
difference of student, critic and CWD projection.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from torch import nn

from kdlab.core.config import OptimConfig, ScheduleConfig
from kdlab.methods import build_distiller
from kdlab.models import build_model
from kdlab.tasks import build_task
from kdlab.training.optimisation import Optimisation
from kdlab.training.step import train_step

SKD = {"pixel_weight": 1.0, "pixel_reduction": "pixel", "temperature": 1.0,
       "pair_weight": 10.0, "pair_pool": "kernel", "pool_kernel": 2, "pair_norm": "normalize",
       "adversarial": "hinge", "generator_weight": 0.001, "critic_weight": 0.1,
       "gp_weight": 0.0, "critic_width": 64, "critic_lr": 4e-4, "critic_optimizer": "adam",
       "critic_schedule": "constant", "critic_order": "student_first",
       "spectral_norm": "sagan"}
ADV = {k: v for k, v in SKD.items() if k not in ("pixel_weight", "pixel_reduction",
                                                  "temperature", "pair_weight", "pair_pool",
                                                  "pool_kernel", "pair_norm")}


def cwd_combo(feature_weight: float) -> dict:
    return {"parts": [
        {"name": "cwd", "logits_weight": 3.0, "feature_weight": feature_weight,
         "temperature": 4.0, "feature_projection": "conv"},
        {"name": "kd", "temperature": 1.0, "kd_weight": 1.0},
        {"name": "skd", "pixel_weight": 0.0, "pair_weight": 0.0, **ADV}]}


def import_cirkd(path: str):
    sys.path.insert(0, path)
    from losses.adv import CriterionAdv, CriterionAdvForG
    from losses.cwd import CriterionCWD
    from losses.kd import CriterionKD
    from losses.skd import CriterionStructuralKD
    from losses.task import SegCrossEntropyLoss
    from utils.sagan import Discriminator
    sys.path.remove(path)
    return dict(adv=CriterionAdv, adv_g=CriterionAdvForG, cwd=CriterionCWD, kd=CriterionKD,
                skd=CriterionStructuralKD, ce=SegCrossEntropyLoss, D=Discriminator)


def copy_critic(ours: nn.Sequential, theirs: nn.Module) -> None:
    """kdlab's Critic (BN, [SN conv, LReLU, (attention)] x 4, conv) into CIRKD's."""
    convs = [m for m in ours if hasattr(m, "parametrizations")]
    attns = [m for m in ours if hasattr(m, "gamma")]
    with torch.no_grad():
        theirs.preprocess_additional.load_state_dict(ours[0].state_dict())
        for conv, layer in zip(convs, (theirs.l1, theirs.l2, theirs.l3, theirs.l4), strict=True):
            sn = layer[0].module
            sn.weight_bar.copy_(conv.parametrizations.weight.original)
            sn.weight_u.copy_(conv.parametrizations.weight[0].u)
            sn.weight_v.copy_(conv.parametrizations.weight[0].v)
            sn.bias.copy_(conv.bias)
        for attn, ref in zip(attns, (theirs.attn1, theirs.attn2), strict=True):
            for a, b in (("query", "query_conv"), ("key", "key_conv"), ("value", "value_conv")):
                getattr(ref, b).load_state_dict(getattr(attn, a).state_dict())
            ref.gamma.copy_(attn.gamma + 0.1)  # non-zero, so attention matters
            attn.gamma.copy_(ref.gamma)
        theirs.last[0].load_state_dict(ours[-1].state_dict())


def run(method: str, options: dict, ref_mod: dict, steps: int, feature_weight: float) -> None:
    torch.manual_seed(0)
    teacher = build_model("seg_resnet20", num_classes=19, in_channels=3, input_size=256)
    student = build_model("seg_resnet8", num_classes=19, in_channels=3, input_size=256)
    for net in (teacher, student):
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
    teacher.eval()
    task = build_task("segmentation", options={"align_corners": True})
    d = build_distiller(method, options, student, teacher, task=task).double()
    critic = d.critic if method == "skd" else d.parts["skd"].critic
    D = ref_mod["D"](1, 19, False, conv_dim=64).double()
    copy_critic(critic, D)
    s_ref = copy.deepcopy(d.student)
    t_ref = d.teacher
    params = [p for n, p in d.named_parameters() if p.requires_grad and "critic" not in n]
    sep = d.separate_optimizers()
    optim = Optimisation.build(params, sep, OptimConfig(lr=0.02, momentum=0.9,
                                                        weight_decay=1e-4),
                               ScheduleConfig(name="poly", iterations=steps),
                               steps_per_epoch=steps, device=torch.device("cpu"), amp="none")
    proj = d.parts["cwd"].projection if method == "combo" else None
    cwd = ref_mod["cwd"](32, 64, norm_type="channel", divergence="kl", temperature=4.0).double()
    if proj is not None:
        with torch.no_grad():
            cwd.conv.weight.copy_(proj.weight)
    ref_params = list(s_ref.parameters()) + list(cwd.parameters())
    ref_opt = torch.optim.SGD(ref_params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    ref_d_opt = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], 4e-4,
                                 [0.9, 0.99])
    ce, kd = ref_mod["ce"](ignore_index=255), ref_mod["kd"](temperature=1.0)
    skd, adv, adv_g = ref_mod["skd"](), ref_mod["adv"]("hinge"), ref_mod["adv_g"]("hinge")
    g = torch.Generator().manual_seed(1)
    d.train()
    s_ref.train()
    D.train()
    print(f"-- {method} ({'CIRKD SKD row' if method == 'skd' else 'CIRKD CWD row'}"
          f"{'' if method == 'skd' else f', kdlab feature_weight {feature_weight}'})")
    for it in range(steps):
        x = torch.randn(2, 3, 256, 256, generator=g, dtype=torch.float64)
        y = torch.randint(0, 19, (2, 256, 256), generator=g)
        # kdlab: the trainer's step (forward, one backward, every optimiser and schedule)
        _, losses, _ = train_step(d, optim, x, y, None, device=torch.device("cpu"), amp="none")
        student_loss = sum(v for k, v in losses.items() if not k.endswith("critic"))
        # CIRKD: train_kd.py:313-376
        for group in ref_opt.param_groups:  # adjust_lr(iter=it) before the step
            group["lr"] = 0.02 * (1 - it / steps) ** 0.9
        with torch.no_grad():
            t = t_ref.features(x)
        s = s_ref.features(x)
        task_loss = ce(s.logits, y)
        adv_g_loss = 0.001 * adv_g(D(s.logits))
        adv_d_loss = 0.1 * adv(D(s.logits.detach()), D(t.logits.detach()))
        ref_loss = task_loss + 1.0 * kd(s.logits, t.logits) + adv_g_loss
        if method == "skd":
            ref_loss = ref_loss + 10.0 * skd(s.embedding, t.embedding)
        else:
            ref_loss = (ref_loss + 50.0 * cwd(s.embedding, t.embedding)
                        + 3.0 * cwd(s.logits, t.logits))
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        ref_d_opt.zero_grad()
        adv_d_loss.backward()
        ref_d_opt.step()
        w = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()
                for a, b in zip(d.student.parameters(), s_ref.parameters(), strict=True))
        wc = max(((conv.parametrizations.weight.original - layer[0].module.weight_bar).abs()
                  .max()).item() for conv, layer in zip(
            [m for m in critic if hasattr(m, "parametrizations")],
            (D.l1, D.l2, D.l3, D.l4), strict=True))
        wp = (proj.weight - cwd.conv.weight).abs().max().item() if proj is not None else 0.0
        print(f"step {it + 1}: loss kdlab {student_loss.item():.15g} CIRKD "
              f"{ref_loss.item():.15g}  student weights rel {w:.2e}  critic abs {wc:.2e}"
              f"  projection abs {wp:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cirkd", required=True, help="checkout of winycg/CIRKD @ 48eb81b")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--feature-weight", type=float, default=100.0,
                    help="kdlab's cwd feature_weight (CIRKD's 50 x 64 / 32 here)")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    mods = import_cirkd(args.cirkd)
    run("skd", SKD, mods, args.steps, 0.0)
    run("combo", cwd_combo(args.feature_weight), mods, args.steps, args.feature_weight)


if __name__ == "__main__":
    main()
