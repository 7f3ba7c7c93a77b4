"""Write the CIRKD trajectory (step-exact) fixtures: SKD and CWD as CIRKD ran them, a few
training steps run by CIRKD's own training loop on kdlab's networks, weights and batches, in
float64 (``tests/methods/test_parity_trajectory_cirkd.py``; the cases are
``cirkd_trajectory_setup.py``'s).

Usage (a checkout of winycg/CIRKD at ``48eb81b7a0ed7c59f9e347e97feb95a23e943d12``, the
2022 code that holds the README's Cityscapes rows, e.g. ``git archive`` of that commit; the
fixtures record the commit read from the checkout's git or its ``COMMIT`` file)::

    PYTHONPATH=src python benchmarks/parity/cirkd_trajectory.py --cirkd <CIRKD checkout> \
        [--cases NAME ...] [--out tests/fixtures/parity/trajectory_cirkd]

How CIRKD runs: its own ``Trainer.train`` (``train_kd.py:300-432``: teacher and student
forward, task loss with the auxiliary head at 0.4, the hinge critic's G and D terms, pixel KD,
SKD's pair-wise term or CWD on features and logits, ``adjust_lr``, the student's SGD step,
then the critic's Adam step), unchanged, on a ``Trainer`` made without ``__init__`` (which
reads Cityscapes and builds CIRKD's DeepLabV3s). What ``__init__`` sets is set as its lines
set it (``train_kd.py:213-263``): the criteria, the SAGAN ``Discriminator`` (its weights and
``u, v`` copied from kdlab's critic), the SGD over the student, ``criterion_cwd`` and
``criterion_fitnet`` (``criterion_cwd``'s 1x1 conv holds kdlab's projection), the critic's
Adam. ``args`` is ``train_kd.py``'s own ``parse_args`` on the flags of
``train_scripts/train_kd/train_skd.sh`` / ``train_cwd.sh`` (the bracketed paths replaced),
plus ``--skip-val`` and log / save periods beyond the run (its final checkpoint goes to a
temporary folder). Its loader is the list of the fixture's batches; ``s_model`` and
``t_model`` are copies of kdlab's networks that answer as CIRKD's models do (``[logits, aux,
feature]``). Per step the loop's own variables (``task_loss``, ``kd_loss``, ...,
``losses``, ``D_losses``) are read from its frame when it calls ``optimizer.step``, and
the digest of every tensor linked to one of kdlab's is taken after ``D_optimizer.step``.
Then kdlab runs the same case and must agree to ``trajectory_setup.RTOL``, or nothing is
written.

Shims, all undone afterwards: ``Tensor.cuda`` / ``Module.cuda`` return the object (CPU);
stand-ins for what ``train_kd.py`` imports but this run never calls (``models.model_zoo``,
the ``dataset`` modules, ``turtle``: ``losses/dsd.py`` imports an unused name from it); a
one-process gloo group for ``reduce_mean_tensor``'s ``all_reduce``. Nothing of CIRKD is
copied into kdlab; this script imports it from the checkout while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cirkd_trajectory_setup as CS  # noqa: E402
import generate as G  # noqa: E402
import trajectory as T  # noqa: E402
import trajectory_setup as TS  # noqa: E402

from kdlab.tasks.segmentation.task import aux_map  # noqa: E402

REPO = "github.com/winycg/CIRKD"
COMMAND = "python benchmarks/parity/cirkd_trajectory.py --cirkd <CIRKD checkout>"
PACKAGES = ("losses", "utils", "models", "dataset")
Getter = Callable[[], Tensor]
#: what train_kd.py imports but this run never calls (its __init__ and validation use them)
STUBS: dict[str, dict[str, Any]] = {
    "models": {}, "models.model_zoo": {"get_segmentation_model": None}, "dataset": {},
    "dataset.cityscapes": {"CSTrainValSet": None},
    "dataset.ade20k": {"ADETrainSet": None, "ADEDataValSet": None},
    "dataset.camvid": {"CamvidTrainSet": None, "CamvidValSet": None},
    "dataset.voc": {"VOCDataTrainSet": None, "VOCDataValSet": None},
    "dataset.coco_stuff_164k": {"CocoStuff164kTrainSet": None, "CocoStuff164kValSet": None},
    "turtle": {"forward": None},
}


class AsCirkd(nn.Module):
    """A kdlab segmentation network answering as CIRKD's models do: ``[logits, aux,
    feature]`` (``models/deeplabv3.py:45-53``; no aux entry without an auxiliary head)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> list[Tensor]:
        f = self.net.features(x)
        aux = aux_map(f)
        return [f.logits, *([] if aux is None else [aux]), f.embedding]


# --------------------------------------------------------------------- the critic
def critic_pairs(ours: nn.Sequential, theirs: nn.Module) -> dict[str, str]:
    """kdlab's critic state_dict name -> CIRKD's ``Discriminator`` one."""
    convs = [i for i, m in enumerate(ours) if hasattr(m, "parametrizations")]
    attns = [i for i, m in enumerate(ours) if hasattr(m, "gamma")]
    if len(convs) != 4 or len(attns) != 2:
        raise SystemExit("kdlab's critic is not CIRKD's shape (4 SN convs, 2 attentions)")
    out = {f"0.{k}": f"preprocess_additional.{k}" for k in ours[0].state_dict()}
    for i, layer in zip(convs, ("l1", "l2", "l3", "l4"), strict=True):
        sn = f"{layer}.0.module."
        out |= {f"{i}.bias": sn + "bias", f"{i}.parametrizations.weight.original": sn
                + "weight_bar", f"{i}.parametrizations.weight.0.u": sn + "weight_u",
                f"{i}.parametrizations.weight.0.v": sn + "weight_v"}
    for i, attn in zip(attns, ("attn1", "attn2"), strict=True):
        out[f"{i}.gamma"] = f"{attn}.gamma"
        for a, b in (("query", "query_conv"), ("key", "key_conv"), ("value", "value_conv")):
            out |= {f"{i}.{a}.{p}": f"{attn}.{b}.{p}" for p in ("weight", "bias")}
    last = len(ours) - 1
    out |= {f"{last}.weight": "last.0.weight", f"{last}.bias": "last.0.bias"}
    if set(out) != set(ours.state_dict()) or set(out.values()) != set(theirs.state_dict()):
        raise SystemExit("kdlab's and CIRKD's critic tensors do not pair up")
    return out


def copy_critic(prefix: str, ours: nn.Sequential, theirs: nn.Module) -> dict[str, Getter]:
    """kdlab's critic copied into CIRKD's; kdlab name -> CIRKD tensor getter."""
    pairs = critic_pairs(ours, theirs)
    mine, their = ours.state_dict(), theirs.state_dict()
    with torch.no_grad():
        for a, b in pairs.items():
            their[b].copy_(mine[a])
    return {prefix + a: (lambda b=b: theirs.state_dict()[b]) for a, b in pairs.items()}


# --------------------------------------------------------------------- running CIRKD
def script_flags(script: Path) -> list[str]:
    """The ``train_kd.py`` flags of the script's first command, bracketed paths replaced."""
    block = script.read_text().split("\n\n")[0].replace("\\\n", " ")
    tokens = shlex.split(re.sub(r"\[[^\]]*\]", "X", block))
    return tokens[tokens.index("train_kd.py") + 1:]


def parsed_args(tk: Any, script: Path, tmp: str) -> argparse.Namespace:
    """``train_kd.py``'s ``parse_args`` on the script's flags (as its ``__main__`` then sets
    them up for one CPU process)."""
    flags = script_flags(script) + ["--save-dir", tmp, "--log-dir", tmp, "--skip-val",
                                    "--log-iter", "1000000000", "--save-per-iters",
                                    "1000000000"]
    saved = sys.argv
    sys.argv = ["train_kd.py", *flags]
    try:
        args = tk.parse_args()
    finally:
        sys.argv = saved
    args.num_gpus, args.distributed, args.device = 1, False, "cpu"
    return args


@contextlib.contextmanager
def cirkd_imported(root: Path, tmp: str) -> Iterator[Any]:
    """CIRKD's ``train_kd.py`` as a module, with the shims; everything undone after."""
    saved = {(torch.Tensor, "cuda"): torch.Tensor.cuda, (nn.Module, "cuda"): nn.Module.cuda}
    with T.isolated(), G.imported_from(root, *PACKAGES):
        T.stub_modules(**STUBS)
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        dist.init_process_group("gloo", store=dist.FileStore(f"{tmp}/store", 1), rank=0,
                                world_size=1)
        try:
            yield T.load_script_as(root / "train_kd.py", "cirkd_train_kd")
        finally:
            dist.destroy_process_group()
            for (owner, name), fn in saved.items():
                setattr(owner, name, fn)


def trainer(tk: Any, args: argparse.Namespace, d: Any, links: dict[str, Getter]) -> Any:
    """CIRKD's ``Trainer`` with what its ``__init__`` sets (train_kd.py:162-279), on copies
    of kdlab's networks and modules; the links of the copied tensors added to ``links``."""
    tr = tk.Trainer.__new__(tk.Trainer)
    tr.args, tr.device, tr.num_gpus = args, torch.device("cpu"), 1
    tr.train_loader = []
    for i in range(CS.STEPS):
        x, y = CS.step_batch(i)
        tr.train_loader.append((x, torch.where(y == CS.IGNORE, args.ignore_label, y), None))
    tr.t_model = AsCirkd(copy.deepcopy(d.teacher))
    tr.s_model = AsCirkd(copy.deepcopy(d.student))
    links |= T.link(T.prefix_of(d, d.student), d.student, tr.s_model.net)
    if any(k.startswith("teacher.") for k in d.state_dict()):
        links |= T.link("teacher.", d.teacher, tr.t_model.net)
    for p in tr.t_model.parameters():
        p.requires_grad = False
    tr.t_model.eval()
    tr.s_model.eval()
    tr.D_model = tk.Discriminator(preprocess_GAN_mode=1, input_channel=CS.NUM_CLASSES,
                                  distributed=args.distributed).double().cuda()
    critic = CS.critic_of(d)
    links |= copy_critic(T.prefix_of(d, critic), critic, tr.D_model)
    with torch.no_grad():
        probe = torch.randn(1, 3, CS.IMAGE, CS.IMAGE, dtype=torch.float64)
        t_channels = tr.t_model(probe)[-1].size(1)
        s_channels = tr.s_model(probe)[-1].size(1)
    tr.criterion = tk.SegCrossEntropyLoss(ignore_index=args.ignore_label)
    tr.criterion_kd = tk.CriterionKD(temperature=args.kd_temperature)
    tr.criterion_adv = tk.CriterionAdv("hinge")
    tr.criterion_adv_for_G = tk.CriterionAdvForG("hinge")
    tr.criterion_skd = tk.CriterionStructuralKD()
    tr.criterion_ifv = tk.CriterionIFV(CS.NUM_CLASSES)
    tr.criterion_cwd = tk.CriterionCWD(s_channels, t_channels, norm_type="channel",
                                       divergence="kl", temperature=4.).double()
    tr.criterion_fitnet = tk.CriterionFitNet(s_channels, t_channels).double()
    tr.criterion_at = tk.CriterionAT()
    tr.criterion_dsd = tk.CriterionDoubleSimKD()
    projection = CS.projection_of(d)
    if projection is not None:
        with torch.no_grad():
            tr.criterion_cwd.conv.weight.copy_(projection.weight)
        links[T.prefix_of(d, projection) + "weight"] = lambda: tr.criterion_cwd.conv.weight
    params_list = nn.ModuleList([tr.s_model, tr.criterion_cwd, tr.criterion_fitnet])
    tr.optimizer = torch.optim.SGD(params_list.parameters(), lr=args.lr,
                                   momentum=args.momentum, weight_decay=args.weight_decay)
    tr.D_optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad,
                                             tr.D_model.parameters()), 4e-4, [0.9, 0.99])
    return tr


def record(case: CS.Case, tr: Any, links: dict[str, Getter]) -> list[dict[str, Any]]:
    """Per step: the loop's variables when it steps the student, the digest after the
    critic's step."""
    start = {k: get().detach().clone() for k, get in links.items()}
    steps: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    step, d_step = tr.optimizer.step, tr.D_optimizer.step

    def student_step(*a: Any, **k: Any) -> Any:
        loop = sys._getframe(1).f_locals  # Trainer.train's frame
        pending.update(lr=tr.optimizer.param_groups[0]["lr"],
                       terms={n: float(loop[n].detach()) for n in case.terms},
                       total=float(loop["losses"].detach()),
                       critic_total=float(loop["D_losses"].detach()))
        return step(*a, **k)

    def critic_step(*a: Any, **k: Any) -> Any:
        out = d_step(*a, **k)
        now = {name: get() for name, get in links.items()}
        steps.append({**pending, "critic_lr": tr.D_optimizer.param_groups[0]["lr"],
                      "digest": TS.digest(now, start)})
        pending.clear()
        return out

    tr.optimizer.step, tr.D_optimizer.step = student_step, critic_step
    tr.train()
    return steps


def reference(case: CS.Case, root: Path) -> dict[str, Any]:
    """CIRKD's trajectory of ``case`` and the optimiser settings it ran with."""
    d = CS.build(case, *CS.networks())
    with tempfile.TemporaryDirectory() as tmp, cirkd_imported(root, tmp) as tk:
        args = parsed_args(tk, root / "train_scripts" / "train_kd" / case.script, tmp)
        tk.args, tk.logger = args, logging.getLogger("cirkd_trajectory")
        links: dict[str, Getter] = {}
        tr = trainer(tk, args, d, links)
        names = set(TS.unique_state(d))
        if set(links) != names:
            raise SystemExit(f"{case.name}: unlinked tensors {sorted(names ^ set(links))[:6]}")
        steps = record(case, tr, links)
        optim = {"lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
                 "max_iterations": args.max_iterations}
    return {"steps": steps, "reference_optim": optim}


# --------------------------------------------------------------------- comparison
def compare(case: CS.Case, ref: list[dict[str, Any]]) -> dict[str, float]:
    """kdlab's run against CIRKD's: the largest relative differences (terms, digests);
    SystemExit beyond ``trajectory_setup.RTOL``."""
    worst = {"terms": 0.0, "weights": 0.0}
    ours = CS.run(case)
    for i, (mine, theirs) in enumerate(zip(ours, ref, strict=True)):
        for key in ("lr", "critic_lr"):
            if abs(mine[key] - theirs[key]) > 1e-12 * theirs[key]:
                raise SystemExit(f"{case.name} step {i}: {key} {mine[key]} vs {theirs[key]}")
        for errors in term_errors(case, mine, theirs).values():
            worst["terms"] = max(worst["terms"], errors)
        if set(mine["digest"]) != set(theirs["digest"]):
            raise SystemExit(f"{case.name}: digests differ in names "
                             f"{sorted(set(mine['digest']) ^ set(theirs['digest']))[:6]}")
        for k, want in theirs["digest"].items():
            worst["weights"] = max(worst["weights"], TS.digest_error(mine["digest"][k], want))
    print(f"{case.name}: max relative difference terms {worst['terms']:.1e}, weights "
          f"{worst['weights']:.1e}", flush=True)
    if max(worst.values()) > TS.RTOL:
        raise SystemExit(f"{case.name} is not step-exact")
    return worst


def term_errors(case: CS.Case, mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """Relative differences of each of CIRKD's terms and of its two totals."""
    def rel(a: float, b: float) -> float:
        return abs(a - b) / max(abs(b), 1e-300)

    terms = mine["terms"]
    out = {n: rel(terms[case.terms[n]], v) for n, v in theirs["terms"].items()}
    critic = [case.terms[n] for n in CS.CRITIC_TERMS]
    out["losses"] = rel(sum(v for k, v in terms.items() if k not in critic), theirs["total"])
    out["D_losses"] = rel(sum(terms[k] for k in critic), theirs["critic_total"])
    return out


def dumps(fixture: dict[str, Any]) -> str:
    """JSON with every list of numbers on one line (digests stay readable and small)."""
    text = json.dumps(fixture, indent=1, sort_keys=True)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]",
                  lambda m: "[" + ", ".join(s.strip() for s in m.group(1).split(",")) + "]",
                  text) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cirkd", type=Path, required=True, help="checkout of winycg/CIRKD")
    ap.add_argument("--cases", nargs="*", help="only these (default: every case)")
    ap.add_argument("--out", type=Path, default=CS.FIXTURES)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.cases or sorted(CS.CASES):
        case = CS.CASES[name]
        ref = reference(case, args.cirkd)
        worst = compare(case, ref["steps"])
        cfg = CS.recipe(case)
        fixture = {
            "case": name, "method": case.method,
            "recipe": case.recipe_path.relative_to(CS.P.ROOT).as_posix(),
            "networks": list(CS.NETWORKS), "batch": CS.BATCH, "image": CS.IMAGE,
            "seeds": CS.SEEDS, "dtype": "float64",
            "options": cfg.method_options, "task_options": cfg.task_options,
            "reference_optim": ref["reference_optim"],
            "script": f"train_scripts/train_kd/{case.script}", "terms": case.terms,
            "references": {"cirkd": {"repository": REPO,
                                     "commit": G.commit_of(args.cirkd)}},
            "command": COMMAND + f" --cases {name}",
            "max_relative_difference": worst, "steps": ref["steps"],
        }
        path = args.out / f"{name}.json"
        path.write_text(dumps(fixture))
        print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
