"""FCFD: Function-Consistent Feature Distillation.

Liu, Kan, Shan & Chen, "Function-Consistent Feature Distillation", ICLR 2023. Both networks are
cut into N stages; at positions k a student feature is judged by its appearance (``L_app``,
Eq. 5) and by its function: bridged through the teacher's later stages (``L_func``, path
``<k, delta=1>``, Eq. 6) and, the other way round, a bridged teacher feature through the
student's later stages (``L_func'``, path ``<k, delta=0>``, Eq. 7). Each iteration samples
``|S|`` of the candidate paths (Eq. 9). See ``docs/fcfd.md`` for how every term maps to the
paper and where we differ from the authors' code.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.fcfd.losses import app_loss, func_l2_loss, pooled_l2_loss
from kdlab.methods.fcfd.path_bn import PathStats
from kdlab.methods.shared.bridge import Bridge
from kdlab.methods.shared.logits import dkd_loss, kd_loss
from kdlab.methods.shared.simkd_projector import ReusedHead, SimKDProjector, SimKDStudent
from kdlab.methods.teacher_source import TEACHER_BN_MODES
from kdlab.models.staged.view import Features
from kdlab.nn.chunked_bn import chunked_batchnorm

#: the key of FCFD+SimKD's projected last student feature in the student pass's ``extras``
SIMKD_PROJECTION = "simkd_projection"
#: the function terms a sampled path can produce, in the order they are reported
PATH_TERMS = ("func_l2", "func_kl", "funcp_kl", "funcp_l2")
Path = tuple[int, int]  # (k, delta): 1-based position, 1 = student->teacher, 0 = teacher->student
#: method.bridge_init -> kdlab.methods.shared.bridge.Bridge's init
BRIDGE_INITS = {"authors": "fcfd_authors", "kaiming": "kaiming"}

#: the deltas of each ``directions`` setting
DELTAS = {"both": (1, 0), "s2t": (1,), "t2s": (0,)}


def candidate_paths(positions: list[int], directions: str) -> list[Path]:
    """The candidate paths ``<k, delta>`` (App. H.2) at ``positions`` in ``directions``."""
    return [(k, d) for d in DELTAS[directions] for k in sorted(set(positions))]


def sampled_paths(num_paths: int | str, candidates: list[Path], where: str) -> int:
    """|S|, the paths sampled per iteration (Eq. 9): ``num_paths``, ``"all"`` being every
    candidate; a UserError naming ``where.num_paths`` when there are fewer candidates."""
    if num_paths == "all":
        return len(candidates)
    if isinstance(num_paths, int) and num_paths <= len(candidates):
        return num_paths
    raise UserError(f"{where}.num_paths is {num_paths!r} but there are {len(candidates)} "
                    f"candidate paths {candidates}; use 0..{len(candidates)} or 'all'.")


@METHODS.register("fcfd")
class FCFD(Distiller):
    """FCFD (Liu et al., ICLR 2023): L_task + L_kd + sum_K L_app + sampled L_func / L_func'.

    On segmentation networks the same method distils backbone stages with the decoder as
    the lens: L_func runs a bridged student feature through the teacher's later stages and
    decoder (L2 at every later stage and on the decoder's feature map when ``pooled_l2``,
    pixel-wise KL on the score map), L_func' the other way round (see docs/segmentation.md).
    """

    tasks = ("classification", "segmentation")

    @dataclass
    class Config:
        """FCFD hyper-parameters; defaults are the paper's CIFAR-100 setting (App. A.1).

        Positions use the paper's 1-based stage numbering: ``k`` in ``1..N`` names the
        output of stage ``k`` (``F^k``), i.e. ``Staged.features(x).stages[k - 1]``. With
        the default ``k_min = 2`` on 4-stage networks the function paths start at
        ``k in {2, 3}`` (four candidates ``<k, delta>``, App. H.2) and ``L_app`` is applied
        at ``k in {2, 3, 4}`` (every position from ``k_min`` on, as in the authors' code).

        The L2 weights default to 5.0, the value of nine of the authors' ten published CIFAR
        configurations (only resnet20 <- resnet56 uses 0.02); the temperature to 4 (six of
        ten; the recipes set 8 where the authors do). ``teacher_bn``: ``batch`` (default) is the
        authors' code, whose ``model.train()`` puts the frozen teacher's BN on batch
        statistics; ``eval`` runs the frozen teacher on its running statistics, its trained
        function (kdlab's former default; on Fashion-MNIST, 3 seeds, FCFD with ``eval`` was
        0.18 points above ``batch``, unresolved: paired std 1.09,
        benchmarks/results/teacher_bn/notes.md).

        ``bridge_init``: ``authors`` (default) starts the bridges as the authors'
        ``MetaModel`` does: the stride-2 and transposed convolutions with a bias, the
        transposed ones with PyTorch's default weights (He-normal for the others);
        ``kaiming`` gives every bridge conv He-normal weights and no bias (kdlab's former
        default; the two differ only for pairs whose stage sizes differ; not compared for
        accuracy). See :class:`~kdlab.methods.shared.bridge.Bridge`.

        ``path_batching``: the sampled paths that run through the same network's later
        stages run as one pass, concatenated along the batch, with every BatchNorm
        normalising each path's chunk on its own statistics (the same losses, gradients and
        running statistics as one pass per path, which ``false`` runs).
        """

        ce_weight: float = setting(1.0, range=">= 0")  # L_task
        kd_weight: float = setting(1.0, range=">= 0")  # L_kd
        # shared by L_kd, L_func-KL and L_func' (4 or 8; 1 on ImageNet)
        temperature: float = setting(4.0, range="> 0")
        app_weight: float = setting(5.0, range=">= 0")  # L_app (5.0 or 0.02)
        # L2 terms of L_func (the paper ties it to app_weight)
        func_l2_weight: float = setting(5.0, range=">= 0")
        func_kl_weight: float = setting(1.0, range=">= 0")  # KL term of L_func (1 or 0.2)
        # L_func' (the paper ties it to func_kl_weight)
        funcp_kl_weight: float = setting(1.0, range=">= 0")
        # App. G's L_func'-L2 (off in the paper's main results)
        funcp_l2_weight: float = setting(0.0, range=">= 0")
        k_min: int = setting(2, range=">= 1")  # smallest function-path position (App. H.3)
        # function-path positions; None = k_min..N-1
        positions: list[int] | None = setting(None, range=">= 1")
        # L_app positions; None = k_min..N
        app_positions: list[int] | None = setting(None, range=">= 1")
        # both | s2t (delta=1, L_func only) | t2s (delta=0, L_func')
        directions: str = setting("both", choices=("both", "s2t", "t2s"))
        # |S| paths sampled per iteration, or "all"
        num_paths: int | str = setting(2, range=">= 0", choices=("all",))
        partial_func: bool = False  # App. H.4: L_func through one teacher stage, L2 only
        pooled_l2: bool = True  # authors' code: also L2 of ReLU'd pooled last features (docs)
        # authors' code: L2 weights ramp up linearly; 0 = off
        l2_warmup_epochs: int = setting(20, range=">= 0")
        logit_loss: str = setting("kl", choices=("kl", "dkd"))  # kl | dkd (FCFD+DKD, App. C.1)
        dkd_alpha: float = setting(1.0, range=">= 0")  # TCKD weight for logit_loss = dkd
        dkd_beta: float = setting(2.0, range=">= 0")  # NCKD weight for logit_loss = dkd
        simkd: bool = False  # FCFD+SimKD (App. C.2): logits = C_t(B_st^N(F_s^N))
        simkd_factor: int = setting(2, range=">= 1")  # SimKD projector bottleneck factor
        # batch (the authors' train-mode frozen teacher) | eval
        teacher_bn: str = setting("batch", choices=TEACHER_BN_MODES)
        # authors (their MetaModel's) | kaiming (every conv)
        bridge_init: str = setting("authors", choices=tuple(BRIDGE_INITS))
        path_batching: bool = True  # run the sampled paths through one network as one batch

        def check(self, where: str, task: str | None = None) -> None:
            """FCFD+SimKD and FCFD+DKD are for classification; positions given bound |S|
            (the default positions depend on the networks' stages: :meth:`FCFD.setup`)."""
            if task not in (None, "classification") and (self.simkd or self.logit_loss == "dkd"):
                raise UserError(f"FCFD+SimKD and FCFD+DKD ({where}.simkd, logit_loss: dkd) "
                                f"are classification methods; set simkd: false and "
                                f"logit_loss: kl for task {task!r}.")
            if self.positions is not None:
                sampled_paths(self.num_paths, candidate_paths(self.positions, self.directions),
                              where)

    def setup(self) -> None:
        """The bridges, the SimKD head and the path-aware BN statistics for this pair; the
        settings that the networks bound (stage positions, the candidate paths) are checked
        here, the others by the validation pass (:meth:`Config.check`)."""
        assert self.teacher is not None  # the Distiller base refuses a missing teacher
        c = self.cfg
        self.num_stages = n = self.student.num_stages
        if self.teacher.num_stages != n:
            raise UserError(
                f"FCFD needs teacher and student cut into the same number of stages (teacher "
                f"{self.teacher.num_stages}, student {n}); pick a pair from the same stage layout."
            )
        self.positions, self.app_positions = self._stage_positions(n)
        self.candidates: list[Path] = candidate_paths(self.positions, c.directions)
        self.num_paths = sampled_paths(c.num_paths, self.candidates, "method")
        #: some bridges and stages get no gradient in an iteration (DDP must know)
        self.may_skip_parameters = self.num_paths < len(self.candidates)
        self._build_bridges(n)
        self._build_simkd_head(n)
        self._build_path_stats(n)
        self.set_epoch(0, 1)  # the L2 warm-up starts right without the trainer calling it

    def _stage_positions(self, n: int) -> tuple[list[int], list[int]]:
        """The positions of ``L_func``'s paths and of ``L_app`` (1-based stages, Eq. 4-7),
        checked against the pair's ``n`` stages."""
        c = self.cfg
        if c.k_min > n:
            raise UserError(f"method.k_min={c.k_min} is past the last of these networks' {n} "
                            f"stages; set method.k_min to a stage in 1..{n}.")
        positions = list(range(c.k_min, n)) if c.positions is None else list(c.positions)
        app_positions = (
            list(range(c.k_min, n + 1)) if c.app_positions is None else list(c.app_positions)
        )
        for name, ks in (("positions", positions), ("app_positions", app_positions)):
            bad = [k for k in ks if k > n]
            if bad:
                raise UserError(
                    f"method.{name} {bad} outside the stages: use positions in 1..{n} (the "
                    "paper's 1-based stage numbering)."
                )
        if c.partial_func and n in positions:
            raise UserError(
                f"method.partial_func runs one teacher stage after k, so positions must be "
                f"below {n}; drop {n} from method.positions."
            )
        return sorted(set(positions)), sorted(set(app_positions)) if c.app_weight else []

    def _build_bridges(self, n: int) -> None:
        """``b_st``: student -> teacher bridges (``L_app`` and paths <k, 1>; with SimKD the
        projector at the last stage); ``b_ts``: teacher -> student bridges (paths <k, 0>)."""
        c = self.cfg
        init = BRIDGE_INITS[c.bridge_init]
        s_info, t_info = self.student.stage_info, self.teacher.stage_info
        st_positions = set(self.app_positions) | {k for k, d in self.candidates if d == 1}
        self.b_st = nn.ModuleDict()
        self.b_ts = nn.ModuleDict()
        for k in sorted(st_positions - ({n} if c.simkd else set())):
            self.b_st[str(k)] = Bridge(
                s_info[k - 1], t_info[k - 1], where=f"student -> teacher at stage {k}",
                init=init,
            )
        if c.simkd:
            if (s_info[-1].height, s_info[-1].width) != (t_info[-1].height, t_info[-1].width):
                raise UserError(
                    "FCFD+SimKD needs the last student and teacher features of the same "
                    "spatial size; set method.simkd=false for this pair."
                )
            self.b_st[str(n)] = SimKDProjector(
                s_info[-1].channels, t_info[-1].channels, c.simkd_factor
            )
        for k in sorted({k for k, d in self.candidates if d == 0}):
            self.b_ts[str(k)] = Bridge(
                t_info[k - 1], s_info[k - 1], where=f"teacher -> student at stage {k}",
                init=init,
            )

    def _build_simkd_head(self, n: int) -> None:
        """With ``simkd``: a copy of the teacher's head on the projected student features
        (FCFD+SimKD), which the deployed student keeps."""
        self.simkd_head: ReusedHead | None = None
        if not self.cfg.simkd:
            return
        head = list(self.teacher.head_modules())
        n_cls = len(self.teacher.classifier_modules())
        self.simkd_head = ReusedHead(
            copy.deepcopy(head[: len(head) - n_cls]),
            self.teacher._pool,
            copy.deepcopy(head[len(head) - n_cls :]),
        )
        last = self.teacher.stage_info[-1]
        object.__setattr__(self, "_deployable", SimKDStudent(
            self.student, self.b_st[str(n)], self.simkd_head, (last.height, last.width)))

    def _build_path_stats(self, n: int) -> None:
        """Path-aware BN: paths <k, 0> feed bridged teacher features to the student's stages
        k+1..N and head, and each keeps its own running statistics there. The teacher is
        frozen in eval mode, so its BN layers use (and never update) their trained statistics
        on every path and need no copies."""
        self.path_stats = PathStats()
        for k in sorted({k for k, d in self.candidates if d == 0}):
            modules = [self.student.stage_modules(i) for i in range(k, n)]
            modules.append(self.student.head_modules())
            if self.cfg.simkd:
                modules.append(self.b_st[str(n)])
            self.path_stats.add_path(self.path_name(k), modules)

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def path_name(k: int) -> str:
        """Name of the BN statistics of path ``<k, delta=0>``."""
        return f"t2s_k{k}"

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        w = self.cfg.l2_warmup_epochs
        self._l2_scale = min(1.0, (epoch + 1) / w) if w > 0 else 1.0

    def sample_paths(self) -> list[Path]:
        """|S| candidate paths, drawn with torch's global RNG (reproducible per seed)."""
        if self.num_paths == len(self.candidates):
            return list(self.candidates)
        idx = torch.randperm(len(self.candidates))[: self.num_paths].tolist()
        return [self.candidates[i] for i in sorted(idx)]

    def _logit_loss(self, logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
        """KL at temperature tau (x tau^2), or DKD for FCFD+DKD: L_kd, L_func-KL, L_func'."""
        c = self.cfg
        if c.logit_loss == "dkd":
            return dkd_loss(logits, teacher_logits, targets, alpha=c.dkd_alpha,
                            beta=c.dkd_beta, temperature=c.temperature)
        return kd_loss(logits, teacher_logits, c.temperature)

    # ----------------------------------------------------------------- the method
    def student_pass(self, batch: Batch) -> Features:
        """The student's pass; for FCFD+SimKD its logits are ``C_t(B_st^N(F_s^N))`` (App. C.2),
        the projected feature kept in ``extras`` for the terms that read ``B_st^N(F_s^N)``."""
        s = super().student_pass(batch)
        if self.simkd_head is None:
            return s
        n = self.num_stages
        projected = self.b_st[str(n)](s.stages[n - 1])
        return dataclasses.replace(s, logits=self.simkd_head(projected),
                                   extras={**s.extras, SIMKD_PROJECTION: projected})

    def runs_own_student_pass(self) -> bool:
        return self.simkd_head is not None

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        return self.fcfd_terms(student, teacher, batch.targets)

    def teacher_lens(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Context for running the teacher's modules on a bridged student feature.

        ``name`` is :meth:`lens_name` of a ``<k, 1>`` position. The frozen teacher runs
        under ``teacher_bn`` (batch statistics of the path's own input with ``batch``, as the
        authors' train-mode teacher with per-path BN traces); online FCFD swaps in the
        path's BN statistics there.
        """
        return self.teacher_bn_mode()

    def teacher_group_lens(self, names: list[str],
                           chunk: int) -> contextlib.AbstractContextManager[None]:
        """:meth:`teacher_lens` for the ``<k, 1>`` paths ``names`` run as one batch of
        ``chunk``-sample chunks: with ``teacher_bn: batch`` each chunk is normalised on its own
        batch statistics (in eval mode every sample is normalised alone: nothing to do)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.teacher_bn_mode())
        if self.cfg.teacher_bn == "batch":
            assert self.teacher is not None
            stack.enter_context(chunked_batchnorm([self.teacher], chunk))
        return stack

    @staticmethod
    def lens_name(k: int) -> str:
        """Name of the teacher-side BN statistics of path ``<k, delta=1>`` (online FCFD)."""
        return f"s2t_k{k}"

    def fcfd_terms(
        self, s: Features, t: Features, targets: Tensor, *, t_source: Features | None = None
    ) -> Losses:
        """Eq. 9's terms but L_task from the student's pass ``s`` and the teacher's pass ``t``:
        L_kd, L_app and the sampled paths' L_func / L_func', weighted.

        ``t`` holds the targets and must carry no gradient. ``t_source`` (default ``t``)
        supplies the teacher features fed to B_ts on ``<k, 0>`` paths.
        """
        c, n = self.cfg, self.num_stages
        t_source = t if t_source is None else t_source
        paths = self.sample_paths()
        l2w = self._l2_scale

        # B_st(F_s^k) once per k: shared by L_app, the paths <k, 1> and the SimKD head
        need_st = set(self.app_positions) | {k for k, d in paths if d == 1}
        bridged: dict[int, Tensor] = {}
        if SIMKD_PROJECTION in s.extras:  # FCFD+SimKD: B_st^N(F_s^N), from the student pass
            bridged[n] = s.extras[SIMKD_PROJECTION]
        for k in sorted(need_st - bridged.keys()):
            bridged[k] = self.b_st[str(k)](s.stages[k - 1])
        logits = s.logits  # FCFD+SimKD: the projected student's (student_pass)

        losses: Losses = {}
        if c.kd_weight:
            losses["kd"] = c.kd_weight * self._logit_loss(logits, t.logits, targets)

        if self.app_positions:
            app = sum(app_loss(bridged[k], t.stages[k - 1]) for k in self.app_positions)
            if c.pooled_l2 and n in self.app_positions:
                app = app + pooled_l2_loss(bridged[n], t.stages[n - 1])
            losses["app"] = c.app_weight * l2w * app

        per_path = (self._batched_paths(paths, bridged, s, t, t_source, targets)
                    if c.path_batching else {})
        found: dict[str, list[Tensor]] = {name: [] for name in PATH_TERMS}
        for k, delta in paths:
            if (k, delta) in per_path:
                terms = per_path[k, delta]
            elif delta == 1:
                terms = self._through_teacher(k, bridged[k], t, targets)
            else:
                terms = self._through_student(k, s, t, t_source, targets)
            for name, value in terms.items():
                found[name].append(value)
        losses.update(self._path_losses(found, logits.new_zeros(())))
        return losses

    def _batched_paths(self, paths: list[Path], bridged: dict[int, Tensor], s: Features,
                       t: Features, t_source: Features,
                       targets: Tensor) -> dict[Path, dict[str, Tensor]]:
        """The terms of the paths that share a network, each group run as one batch
        (``path_batching``); a path left out (alone in its network, a partial-func path,
        a head that reads earlier stages) runs on its own."""
        c, teacher, student = self.cfg, self.teacher, self.student
        assert teacher is not None
        out: dict[Path, dict[str, Tensor]] = {}
        ks = sorted(k for k, d in paths if d == 1)
        if (len(ks) > 1 and not c.partial_func and not teacher.skips
                and (c.func_l2_weight or c.func_kl_weight)):
            with self.teacher_group_lens([self.lens_name(k) for k in ks], bridged[ks[0]].shape[0]):
                runs = teacher.run_from_many([k - 1 for k in ks], [bridged[k] for k in ks])
            for k, run in zip(ks, runs, strict=True):
                out[k, 1] = self._teacher_terms(k, run, t, targets)
        ks = sorted(k for k, d in paths if d == 0)
        if len(ks) > 1 and not student.skips and (c.funcp_kl_weight or c.funcp_l2_weight):
            xs = [self.b_ts[str(k)](t_source.stages[k - 1]) for k in ks]
            modules: list[nn.Module] = [student]
            if self.simkd_head is not None:
                modules += [self.b_st[str(self.num_stages)], self.simkd_head]
            with self.path_stats.chunked([self.path_name(k) for k in ks], xs[0].shape[0],
                                         modules):
                runs = student.run_from_many([k - 1 for k in ks], xs)
                lasts = [run.stages[-1] if run.stages else x for run, x in zip(runs, xs,
                                                                               strict=True)]
                p_ts = self._student_outputs(runs, lasts)
            for k, run, p in zip(ks, runs, p_ts, strict=True):
                out[k, 0] = self._student_terms(k, run, p, s, t, targets)
        return out

    def _student_outputs(self, runs: list[Features], lasts: list[Tensor]) -> list[Tensor]:
        """The batched ``<k, 0>`` paths' outputs: the student's logits, or for FCFD+SimKD
        ``C_t(B_st^N(.))`` of their last features, projected as one batch."""
        if self.simkd_head is None:
            return [run.logits for run in runs]
        b = lasts[0].shape[0]
        p = self.simkd_head(self._deployable.project(torch.cat(lasts)))
        return list(p.split(b))

    def _through_teacher(self, k: int, bridged: Tensor, t: Features,
                         targets: Tensor) -> dict[str, Tensor]:
        """Path ``<k, 1>`` (Eq. 6): ``B_st(F_s^k)`` through the teacher's stages k+1..N and
        C_t; L2 against the teacher's own later features, KL against its output."""
        c, teacher = self.cfg, self.teacher
        assert teacher is not None
        if not (c.func_l2_weight or c.func_kl_weight):
            return {}
        if c.partial_func:  # App. G: one teacher stage after k only
            with self.teacher_lens(self.lens_name(k)):
                one = teacher.stage_forward(k, bridged)
            return {"func_l2": app_loss(one, t.stages[k])}
        with self.teacher_lens(self.lens_name(k)):
            out = teacher.run_from(k - 1, bridged)
        return self._teacher_terms(k, out, t, targets)

    def _teacher_terms(self, k: int, out: Features, t: Features,
                       targets: Tensor) -> dict[str, Tensor]:
        """L_func's terms (Eq. 6) from path ``<k, 1>``'s run through the teacher."""
        c = self.cfg
        terms: dict[str, Tensor] = {}
        if c.func_l2_weight and out.stages:
            l2 = func_l2_loss(out.stages, t.stages[k:])
            if c.pooled_l2:
                l2 = l2 + pooled_l2_loss(out.stages[-1], t.stages[self.num_stages - 1])
            terms["func_l2"] = l2
        if c.func_kl_weight:
            terms["func_kl"] = self._logit_loss(out.logits, t.logits, targets)
        return terms

    def _through_student(self, k: int, s: Features, t: Features, t_source: Features,
                         targets: Tensor) -> dict[str, Tensor]:
        """Path ``<k, 0>`` (Eq. 7): ``B_ts(F_t^k)`` through the student's stages k+1..N and
        C_s (per-path BN statistics); KL against the teacher's output, and for App. G's
        ``L_func'-L2`` against the student's own later features."""
        c = self.cfg
        if not (c.funcp_kl_weight or c.funcp_l2_weight):
            return {}
        x = self.b_ts[str(k)](t_source.stages[k - 1])
        with self.path_stats.use(self.path_name(k)):
            out = self.student.run_from(k - 1, x)
            last = out.stages[-1] if out.stages else x
            if self.simkd_head is None:
                p_ts = out.logits
            else:  # FCFD+SimKD: p_ts ends with C_t(B_st^N(.)) instead of C_s
                p_ts = self.simkd_head(self._deployable.project(last))
        return self._student_terms(k, out, p_ts, s, t, targets)

    def _student_terms(self, k: int, out: Features, p_ts: Tensor, s: Features, t: Features,
                       targets: Tensor) -> dict[str, Tensor]:
        """L_func' (Eq. 7) and App. G's L_func'-L2 from path ``<k, 0>``'s run through the
        student, whose output is ``p_ts``."""
        c = self.cfg
        terms: dict[str, Tensor] = {}
        if c.funcp_kl_weight:
            terms["funcp_kl"] = self._logit_loss(p_ts, t.logits, targets)
        if c.funcp_l2_weight and out.stages:
            terms["funcp_l2"] = func_l2_loss(out.stages, [f.detach() for f in s.stages[k:]])
        return terms

    def _path_losses(self, found: dict[str, list[Tensor]], zero: Tensor) -> Losses:
        """The weighted sums of the sampled paths' terms. A term whose weight is nonzero is
        always reported (zero when no sampled path produced it), so the logged columns do not
        change from one iteration to the next."""
        c, l2w = self.cfg, self._l2_scale
        deltas = {d for _, d in self.candidates}
        weights = {  # name: (can a candidate path produce it, its weight, L2 warm-up scale)
            "func_l2": (1 in deltas, c.func_l2_weight, l2w),
            "func_kl": (1 in deltas and not c.partial_func, c.func_kl_weight, 1.0),
            "funcp_kl": (0 in deltas, c.funcp_kl_weight, 1.0),
            "funcp_l2": (0 in deltas, c.funcp_l2_weight, l2w),
        }
        losses: Losses = {}
        for name in PATH_TERMS:
            possible, weight, scale = weights[name]
            if possible and weight:
                losses[name] = weight * scale * sum(found[name], zero)
        return losses

    # ----------------------------------------------------------------- evaluation
    def evaluated(self) -> dict[str, nn.Module]:
        if self.simkd_head is not None:
            return {"student": self._deployable}
        return {"student": self.student}

    def exported(self) -> dict[str, nn.Module]:
        if self.simkd_head is not None:
            return {"student": self._deployable}
        return {"student": self.student.net}
