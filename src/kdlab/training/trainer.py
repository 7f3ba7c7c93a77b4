"""The one training loop every method runs through.

A :class:`~kdlab.methods.base.Distiller` returns the student's logits and its weighted loss
terms by name; the trainer sums them, backpropagates, steps the optimiser and the LR
schedule, evaluates every network the distiller reports and writes checkpoints and logs. It
never branches on a method's name.

Determinism: at every epoch start torch / random / numpy are reseeded from
``(train.seed, epoch)`` and the train loader's ``set_epoch(epoch)`` is called, so a run
resumed from an epoch checkpoint (``resume=True``) ends with the same weights as one that
ran straight through. A run killed mid-epoch resumes from its last epoch checkpoint.

Length and evaluation: ``schedule.epochs`` epochs, or ``schedule.iterations`` optimiser steps
(the last epoch cut short); evaluation after every ``train.eval_every`` epochs, or after every
``train.eval_every_iters`` iterations counted from the run's start (a row of its own in
``metrics.csv``, and ``best.pt`` written at that iteration when it improves). Both follow the
global iteration count, so a resumed run evaluates where an uninterrupted one does.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.core.config import RunConfig, save_config
from kdlab.errors import UserError
from kdlab.nn.layout import use_channels_last
from kdlab.runtime import collectives
from kdlab.runtime.files import check_writable_folder
from kdlab.runtime.thread_governor import Look, ThreadGovernor, look_at_cores
from kdlab.runtime.threads import apply_thread_policy
from kdlab.training import distributed, teacher_check
from kdlab.training.build import build_run, check_task, model_specs, resolve_device
from kdlab.training.checkpoint import (
    FORMAT,
    VERSION,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from kdlab.training.compiling import compile_run
from kdlab.training.metrics_log import MetricsLog, Progress
from kdlab.training.model_cost import distillation_costs
from kdlab.training.optimisation import Optimisation, norm_parameters, run_length
from kdlab.training.prebuilt import Prebuilt, refuse_memory
from kdlab.training.report import write_report
from kdlab.training.resume import check_resume, read_saved
from kdlab.training.run_lock import RunLock, is_main_process, remove_stale_temporaries
from kdlab.training.step import train_step
from kdlab.training.trackers import Trackers, end_status
from kdlab.training.trackers.artifacts import export_best, report_files
from kdlab.training.validate import validate_config

#: steps between the (synchronising) checks for a non-finite loss and progress updates
CHECK_EVERY = 20
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "metrics.csv")


# --------------------------------------------------------------------- pieces
def seed_all(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch (all devices), random and numpy from ``(seed, epoch, rank)``; epoch -1 =
    build. Under DDP each rank draws its own stream during training (CRD's negatives, FCFD's
    paths, dropout masks), so ranks do not repeat each other's draws on different data;
    rank 0's stream is the single-process one."""
    s = (seed * 1_000_003 + epoch + 1 + rank * 104_729) % 2**32
    torch.manual_seed(s)
    random.seed(s)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        return
    np.random.seed(s)


def rng_state() -> dict[str, Any]:
    """The generators' states as plain values (recorded in checkpoints for inspection; a
    resumed run does not need them because every epoch reseeds)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")),
                          "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:  # pragma: no cover
        pass
    return state




# --------------------------------------------------------------------- the trainer
class Trainer:
    """Train ``cfg``'s method; :meth:`fit` returns a summary dict.

    With ``resume=True`` the run continues from ``train.out_dir/last.pt`` (same epoch, LR,
    optimiser and scaler state). Under ``torchrun`` it trains with DistributedDataParallel.
    ``prebuilt``: the networks and data that ``cfg`` names ``memory:...``, given as objects
    (the Python API, :mod:`kdlab.training.prebuilt`); everything else is built from its name.
    ``on_epoch``: called with each finished epoch's metrics row, once its checkpoint is
    written; an exception it raises stops the run there (``kdlab tune`` prunes a trial so).
    """

    def __init__(self, cfg: RunConfig, *, resume: bool = False,
                 prebuilt: Prebuilt | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.prebuilt = prebuilt
        self.on_epoch = on_epoch
        self.out_dir = Path(cfg.train.out_dir)

    # ----------------------------------------------------------------- entry point
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.prebuilt is None:
            refuse_memory(cfg, "kdlab train / distill")
        else:
            self.prebuilt.check(cfg)
        validate_config(cfg)  # settings errors before any process group or folder exists
        check_task(cfg)  # the data, networks and method are made for the run's task
        self._lock: RunLock | None = None
        failed = False
        try:
            self._check_out_dir()
            device = resolve_device(cfg.train.device)
            dist_info, device = distributed.setup(device)
            self.dist, self.device = dist_info, device
            try:
                return self._fit()
            finally:
                distributed.cleanup(dist_info)
        except Exception:
            failed = True  # a folder this run made is removed if it holds no checkpoint
            raise
        finally:
            if self._lock is not None:
                self._lock.release(discard=failed)

    def _check_out_dir(self) -> None:
        out = self.out_dir
        check_writable_folder(out, "out=" if self.prebuilt is not None else "train.out_dir")
        if self.resume and not out.is_dir():
            raise UserError(f"Nothing to resume: {str(out)!r} does not exist; check the path or "
                            "start the run without --resume.")
        if self.resume and self.prebuilt is None:
            saved = read_saved(out)
            if saved is not None:
                refuse_memory(saved.config, "--resume")
        if is_main_process():  # one run per folder; see kdlab.training.run_lock
            self._lock = RunLock(out).acquire()
            remove_stale_temporaries(out)
        held = [f for f in RUN_FILES if (out / f).exists()]
        if not self.resume and held:
            raise UserError(f"{str(out)!r} already holds a run ({', '.join(held)}); use --resume "
                            "to continue it or another out_dir.")
        if self.resume:  # what may change on resume: kdlab.training.resume
            for note in check_resume(self.cfg, out):
                if is_main_process():
                    print(f"resume: {note}")

    # ----------------------------------------------------------------- the run
    def _fit(self) -> dict[str, Any]:
        cfg, device, d = self.cfg, self.device, self.dist
        main = d.is_main
        seed_all(cfg.train.seed, -1)
        last_path = self.out_dir / "last.pt"
        self.threads = apply_thread_policy(cfg.train.threads)
        look = self._look_at_cores()
        run = build_run(cfg, device, rank=d.rank, world_size=d.world_size,
                        resuming=self.resume and last_path.is_file(), prebuilt=self.prebuilt)
        self.run = run  # the trained distiller stays reachable after fit()
        self._share_cores_with_workers(run.loaders.train)
        if main:
            print(self.threads.describe(), flush=True)
        self.governor: ThreadGovernor | None = None
        raw = run.distiller
        self.task = raw.task
        if cfg.train.sync_bn and d.enabled:
            distributed.sync_batchnorm(raw, device)
        self.channels_last = use_channels_last(cfg.train.channels_last, device)
        if self.channels_last:
            raw.to(memory_format=torch.channels_last)
        optim = self._optimisation(raw, run.loaders.train)
        epochs = self.epochs
        start, best, history, ckpt = self._starting_point(raw, optim, last_path)
        if start >= epochs:  # a finished run given --resume
            return self._summary(history, raw, finished=True)
        progress = Progress(cfg.train.progress, enabled=main)
        if look is not None and self.threads.adaptive:
            self.governor = ThreadGovernor.after(look, self.threads.threads, note=progress.note)
        self._check_teacher(raw, run, ckpt or {})
        model = self._wrapped(raw)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        collectives.barrier()
        trackers = Trackers.open(cfg, self.out_dir, enabled=main)
        log = MetricsLog(self.out_dir, enabled=main, history=history,
                         tensorboard="tensorboard" in cfg.train.loggers, trackers=trackers)
        try:
            for epoch in range(start, epochs):
                best = self._epoch(epoch, model, raw, run, optim, best, log, progress)
                if self.on_epoch is not None:
                    self.on_epoch(dict(log.rows[-1]))
            log.close()
            summary = self._summary(log.rows, raw, finished=True)
            if main:
                self._report(summary, raw, run, trackers)
        except BaseException as e:
            log.close()
            trackers.end(end_status(e))
            raise
        collectives.barrier()
        return summary

    def _optimisation(self, raw: nn.Module, train_loader: Any) -> Optimisation:
        """The run's optimisation of every trainable parameter; sets the run's length
        (``steps_per_epoch``, ``epochs``, ``last_epoch_steps``)."""
        cfg = self.cfg
        params = [p for p in raw.parameters() if p.requires_grad]
        if not params:
            raise UserError(f"Method {cfg.method_name!r} has no trainable parameters; check the "
                            "model and method settings.")
        self.steps_per_epoch = self._steps_per_epoch(train_loader)
        self.epochs, self.last_epoch_steps = run_length(cfg.schedule, self.steps_per_epoch)
        return Optimisation.build(params, raw.separate_optimizers(), cfg.optim, cfg.schedule,
                                  steps_per_epoch=self.steps_per_epoch,
                                  device=self.device, amp=cfg.train.amp,
                                  norm=norm_parameters(raw))

    def _starting_point(self, raw: nn.Module, optim: Optimisation, last_path: Path
                        ) -> tuple[int, float, list[dict[str, Any]], dict[str, Any] | None]:
        """Where training starts: epoch 0, or with ``--resume`` the saved run's next epoch
        (its weights and optimiser state restored): first epoch, best score, the metrics
        rows so far and the checkpoint read (None when none was)."""
        main, epochs = self.dist.is_main, self.epochs
        if not (self.resume and last_path.is_file()):
            if self.resume and main:
                print(f"{self.out_dir} holds no epoch checkpoint yet; starting from epoch 1")
            return 0, float("-inf"), [], None
        ckpt = load_checkpoint(last_path)
        start, best, history = self._restore(ckpt, raw, optim)
        if main and start >= epochs:
            print(f"The run in {self.out_dir} is finished ({start} of {epochs} epochs); "
                  "nothing to resume. Raise schedule.epochs (or schedule.iterations) "
                  "to train longer.")
        elif main:
            print(f"resuming {self.out_dir} at epoch {start + 1} of {epochs}")
        return start, best, history, ckpt

    def _wrapped(self, raw: nn.Module) -> nn.Module:
        """What the steps call: the distiller, wrapped for DDP and compiled as configured."""
        cfg, main = self.cfg, self.dist.is_main
        model: nn.Module = raw
        if self.dist.enabled:
            model = distributed.wrap(raw, self.device, find_unused=raw.may_skip_parameters)
        if cfg.train.compile:
            model = compile_run(model, raw, cfg.train.compile,
                                warn=print if main else lambda _: None)
        return model

    def _report(self, summary: dict[str, Any], raw: nn.Module, run: Any,
                trackers: Trackers) -> None:
        """The finished run's report (figures of the teacher's and the students' predictions,
        the teacher-vs-student table) and the trackers' final files."""
        device = self.device
        shown = dict(raw.evaluated())
        if raw.teacher is not None:  # the report shows the teacher's predictions too
            shown = {"teacher": raw.teacher, **shown}
        figures = self.task.report_figures(self.out_dir, shown, run.loaders.val, device=device)
        if raw.teacher is not None:  # the report's teacher-vs-student table (no timing)
            summary["teacher_vs_student"] = distillation_costs(raw, self.cfg, summary,
                                                               run.loaders.val, device)
        write_report(self.out_dir, summary, figures=figures)
        if trackers.trackers:
            trackers.finish(report_files(self.out_dir, figures),
                            export_best(self.out_dir, raw, self.cfg, run.loaders.info),
                            summary)

    def _look_at_cores(self) -> Look | None:
        """For a CPU run with a governor: look at the cores before any of the run's work (the
        build, the teacher check) and do that work with the thread count the look suggests;
        the governor starts from it (:mod:`kdlab.runtime.thread_governor`)."""
        if not (self.threads.adaptive and self.device.type == "cpu"):
            return None
        look = look_at_cores()
        torch.set_num_threads(look.threads(self.threads.threads))
        return look

    def _share_cores_with_workers(self, loader: Any) -> None:
        """Leave a core to each DataLoader worker process of the train loader (they decode
        files while the step runs); in-memory loaders have none."""
        workers = getattr(loader, "num_workers", 0)
        if workers:
            self.threads = apply_thread_policy(self.cfg.train.threads, loader_workers=workers)

    def _check_teacher(self, raw: nn.Module, run: Any, ckpt: dict[str, Any]) -> None:
        """Evaluate a frozen teacher once on the validation split (a resumed run takes the
        score and warnings its checkpoint saved), print it and warn when it is at chance
        level (:mod:`kdlab.training.teacher_check`); ``train.evaluate_teacher: false`` skips
        it."""
        saved = ckpt.get("teacher_scores")
        self.teacher_scores: dict[str, float] = {}
        self.warnings: list[str] = [str(w) for w in ckpt.get("warnings", [])]
        teacher = raw.teacher if raw.needs_teacher else None  # online FCFD's is trained
        if teacher is None or not self.cfg.train.evaluate_teacher:
            return
        resumed = isinstance(saved, dict) and bool(saved)
        if resumed:
            self.teacher_scores = {str(k): float(v) for k, v in saved.items()}
        else:
            self.teacher_scores = teacher_check.teacher_scores(
                self.task, teacher, run.loaders.val, device=self.device, amp=self.cfg.train.amp)
        if self.dist.is_main:
            print(teacher_check.describe(self.teacher_scores, self.task.primary,
                                         resumed=resumed), flush=True)
        warning = teacher_check.chance_warning(self.teacher_scores, self.task.primary,
                                               run.info.num_classes)
        if warning in self.warnings:  # said when the run started; said again, kept once
            self.warnings.remove(warning)
        self._warn(warning)

    def _warn(self, warning: str | None) -> None:
        """Print a one-line warning (rank 0) and keep it for the report."""
        if warning is None:
            return
        self.warnings.append(warning)
        if self.dist.is_main:
            print(f"kdlab: warning: {warning}", file=sys.stderr, flush=True)

    def _steps_per_epoch(self, loader: Any) -> int:
        n, cap = len(loader), self.cfg.train.max_steps_per_epoch
        return n if cap is None else min(n, cap)

    def _restore(self, ckpt: dict[str, Any], raw: nn.Module, optim: Optimisation
                 ) -> tuple[int, float, list[dict[str, Any]]]:
        path = self.out_dir / "last.pt"
        if ckpt.get("format") != FORMAT or "distiller" not in ckpt:
            raise UserError(f"{str(path)!r} is not a kdlab run checkpoint; remove it or choose "
                            "another out_dir.")
        if ckpt.get("version", 0) > VERSION:
            raise UserError(f"{str(path)!r} was written by a newer kdlab (format "
                            f"{ckpt['version']}); upgrade kdlab to resume it.")
        try:
            raw.load_state_dict(ckpt["distiller"])
            optim.load_state_dict(ckpt)
        except (RuntimeError, ValueError, KeyError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{str(path)!r} does not match this run's model, method or optimiser "
                            f"({first}); resume with the run's own config.yaml.") from None
        best = ckpt.get("best_score", ckpt.get("best_top1"))  # best_top1: format 1
        return int(ckpt["epoch"]) + 1, float(best), list(ckpt.get("history", []))

    # ----------------------------------------------------------------- one epoch
    def _epoch_steps(self, epoch: int) -> int:
        """Steps of ``epoch``: all, or what ``schedule.iterations`` leaves for the last."""
        return self.last_epoch_steps if epoch == self.epochs - 1 else self.steps_per_epoch

    def _epoch(self, epoch: int, model: nn.Module, raw: nn.Module, run: Any,
               optim: Optimisation, best: float, log: MetricsLog, progress: Progress) -> float:
        cfg, d = self.cfg, self.dist
        epochs = self.epochs
        seed_all(cfg.train.seed, epoch, d.rank)
        run.loaders.train.set_epoch(epoch)
        raw.set_epoch(epoch, epochs)
        lr = optim.lr
        t0, cpu0 = time.perf_counter(), time.process_time()
        self._eval_seconds = 0.0
        state = {"best": best}
        every_iters = cfg.train.eval_every_iters

        def after_step(step: int) -> None:
            """Evaluate after every ``eval_every_iters``-th iteration and the run's last."""
            it = epoch * self.steps_per_epoch + step + 1
            end = epoch == epochs - 1 and step == self._epoch_steps(epoch) - 1
            if every_iters is None or not (it % every_iters == 0 or end):
                return
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, "iteration": it}
            state["best"], improved = self._validate(row, raw, run, state["best"], log)
            log.log(row)
            progress.epoch_line(row)
            if improved and d.is_main:
                save_checkpoint(self.out_dir / "best.pt", self._state(
                    epoch - 1, raw, optim, state["best"], log.rows, iteration=it))
            collectives.barrier()
            self._eval_seconds += time.perf_counter() - started

        stats = self._train_epoch(epoch, model, optim, run.loaders.train, progress, after_step)
        optim.end_epoch()
        train_seconds = time.perf_counter() - t0 - self._eval_seconds
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": stats["loss"]}
        if cfg.schedule.iterations is not None or every_iters is not None:
            row["iteration"] = epoch * self.steps_per_epoch + self._epoch_steps(epoch)
        row.update({f"loss_{k}": v for k, v in stats["terms"].items()})
        if self.task.train_score_name is not None:
            row[f"train_{self.task.train_score_name}"] = stats["score"]
        improved = False
        if every_iters is None and ((epoch + 1) % cfg.train.eval_every == 0
                                    or epoch == epochs - 1):
            state["best"], improved = self._validate(row, raw, run, state["best"], log)
        row.update(teacher_check.columns(self.teacher_scores))
        if self.governor is not None:
            row["cpu_threads"] = self.governor.current
        row["epoch_seconds"] = time.perf_counter() - t0
        row["epoch_cpu_seconds"] = time.process_time() - cpu0  # this process, every thread
        row["images_per_s"] = stats["images"] / max(train_seconds, 1e-9)
        log.log(row)
        progress.epoch_line(row)
        if d.is_main:
            saved = self._state(epoch, raw, optim, state["best"], log.rows,
                                iteration=row.get("iteration"))
            save_checkpoint(self.out_dir / "last.pt", saved)
            if improved:  # the same state: copy the file rather than serialise it again
                copy_checkpoint(self.out_dir / "last.pt", self.out_dir / "best.pt")
        collectives.barrier()
        return state["best"]

    def _validate(self, row: dict[str, Any], raw: nn.Module, run: Any, best: float,
                  log: MetricsLog) -> tuple[float, bool]:
        """Evaluate every network the distiller reports into ``row``; the best score so far
        and whether the first network improved it."""
        distributed.broadcast_buffers(raw)
        improved = False
        for i, (name, net) in enumerate(raw.evaluated().items()):
            m = self.task.evaluate(net, run.loaders.val, device=self.device,
                                   amp=self.cfg.train.amp)
            row.update({f"val_{name}_{k}": v for k, v in m.items() if k != "images"})
            if i == 0 and self.teacher_scores and not any(
                    f"val_{name}_{self.task.primary}" in r for r in log.rows):
                self._warn(teacher_check.below_student_warning(
                    self.teacher_scores, m, self.task.primary))
            if i == 0 and m[self.task.primary] > best:
                best, improved = m[self.task.primary], True
        return best, improved

    def _train_epoch(self, epoch: int, model: nn.Module, optim: Optimisation, loader: Any,
                     progress: Progress,
                     after_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """One epoch's steps; ``after_step(step)`` runs after each (mid-run evaluations)."""
        cfg, device, task = self.cfg, self.device, self.task
        n = self._epoch_steps(epoch)
        model.train()
        terms: dict[str, torch.Tensor] = {}
        bad: dict[str, torch.Tensor] = {}
        total_sum = torch.zeros((), dtype=torch.float64, device=device)
        score = torch.zeros(2, dtype=torch.float64, device=device)  # hits, counted
        seen = steps = 0
        batches = itertools.islice(iter(loader), n)
        if self.governor is not None:
            self.governor.restart()
        last = time.perf_counter()
        for step, batch in enumerate(progress.steps(batches, n, epoch, self.epochs)):
            images, targets, index = batch[0], batch[1], batch[2] if len(batch) > 2 else None
            if self.channels_last and isinstance(images, torch.Tensor) and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            outputs, losses, total = train_step(model, optim, images, targets, index,
                                                device=device, amp=cfg.train.amp,
                                                method=cfg.method_name)
            if self.governor is not None:  # a CPU step is done when train_step returns
                now = time.perf_counter()
                self.governor.step(now - last)
                last = now
            for k, v in losses.items():
                v = v.detach().float()
                if k not in terms:
                    terms[k] = torch.zeros((), dtype=torch.float64, device=device)
                    bad[k] = torch.zeros((), dtype=torch.bool, device=device)
                terms[k] += v.double()
                bad[k] |= ~torch.isfinite(v)
            with torch.no_grad():
                total_sum += total.detach().double()
                counts = task.train_counts(outputs, targets)
                if counts is not None:
                    score += counts.to(score)
            seen += task.batch_size(targets)
            steps += 1
            if steps % CHECK_EVERY == 0 or steps == n:
                self._check_finite(bad, epoch, step)
                shown = {"loss": total_sum.item() / steps}
                if task.train_score_name is not None:
                    shown[task.train_score_name] = 100.0 * score[0].item() / max(
                        score[1].item(), 1.0)
                progress.update(shown)
            if after_step is not None:
                after_step(step)
        if steps == 0:
            raise UserError("The training loader yielded no batches; lower data.batch_size or "
                            "use more training data.")
        sums = torch.cat([torch.stack([total_sum, torch.tensor(float(seen), dtype=torch.float64,
                                                               device=device)]),
                          score, torch.stack(list(terms.values()))])
        collectives.all_reduce_sum(sums)
        world = self.dist.world_size
        return {
            "loss": sums[0].item() / (steps * world),
            "images": int(sums[1].item()),
            "score": 100.0 * sums[2].item() / max(sums[3].item(), 1.0),
            "terms": {k: sums[4 + i].item() / (steps * world) for i, k in enumerate(terms)},
        }

    def _check_finite(self, bad: dict[str, torch.Tensor], epoch: int, step: int) -> None:
        names = list(bad)
        flags = torch.stack([bad[k] for k in names]).to(torch.int32)
        collectives.all_reduce_max(flags)
        broken = [k for k, f in zip(names, flags.tolist(), strict=True) if f]
        if not broken:
            return
        last = self.out_dir / "last.pt"
        kept = (f"{str(last)!r} keeps the last good epoch" if last.is_file()
                else "no epoch checkpoint was written")
        raise UserError(
            f"The training loss became NaN or infinite in epoch {epoch + 1} by step {step + 1} "
            f"(terms: {', '.join(broken)}); lower optim.lr or use train.amp=none ({kept})."
        )

    # ----------------------------------------------------------------- state and summary
    def _state(self, epoch: int, raw: nn.Module, optim: Optimisation, best: float,
               history: list[dict[str, Any]], *, iteration: int | None = None
               ) -> dict[str, Any]:
        """The checkpoint: ``epoch`` is the last finished epoch (a resume starts after it);
        ``iteration`` the iterations done, for a state saved at a mid-epoch evaluation too."""
        exported = raw.exported()
        return {
            "format": FORMAT,
            "version": VERSION,
            "epoch": epoch,
            "iteration": iteration,
            "epochs": self.epochs,
            "distiller": raw.state_dict(),
            **optim.state_dict(),
            "rng": rng_state(),
            "metric": self.task.primary,
            "best_score": best,
            "config": self.cfg.to_dict(),
            "history": [dict(r) for r in history],
            "exported": {name: m.state_dict() for name, m in exported.items()},
            "models": model_specs(exported),
            "world_size": self.dist.world_size,
            "teacher_scores": dict(self.teacher_scores),
            "warnings": list(self.warnings),
        }

    def _summary(self, rows: list[dict[str, Any]], raw: nn.Module, *,
                 finished: bool) -> dict[str, Any]:
        """The run in numbers. Per network ``best_<metric>`` (the task's primary metric) and
        ``last_<key>`` of every validation number; the first network's ``best_<metric>`` /
        ``last_<metric>`` at the top level too (``best_top1`` for classification)."""
        metric = self.task.primary
        networks: dict[str, dict[str, float]] = {}
        for name in raw.evaluated():
            prefix = f"val_{name}_"
            evaluated = [r for r in rows if prefix + metric in r]
            last = evaluated[-1] if evaluated else {}
            entry = {f"best_{metric}": max((r[prefix + metric] for r in evaluated),
                                           default=math.nan)}
            entry.update({f"last_{k[len(prefix):]}": v for k, v in last.items()
                          if k.startswith(prefix)})
            entry.setdefault(f"last_{metric}", math.nan)
            networks[name] = entry
        first = next(iter(networks.values()), {})
        rates = [r["images_per_s"] for r in rows if "images_per_s" in r]
        return {
            "task": self.task.name,
            "metric": metric,
            f"best_{metric}": first.get(f"best_{metric}", math.nan),
            f"last_{metric}": first.get(f"last_{metric}", math.nan),
            "epochs": sum(1 for r in rows if "loss" in r),  # not the evaluation rows
            "seconds": sum(r.get("epoch_seconds", 0.0) for r in rows),
            "images_per_s": sum(rates) / len(rates) if rates else 0.0,
            "out_dir": str(self.out_dir),
            "networks": networks,
            "final_losses": {k[len("loss_"):]: v for k, v in (rows[-1] if rows else {}).items()
                             if k.startswith("loss_")},
            "device": str(self.device),
            "threads": self.threads.describe(),
            "world_size": self.dist.world_size,
            "method": self.cfg.method_name,
            "config": self.cfg.to_dict(),
            "finished": finished,
            "teacher": dict(getattr(self, "teacher_scores", {})),
            "warnings": list(getattr(self, "warnings", [])),
        }
