"""Training-step benchmark: images/s, ms/iter and peak memory per distillation method.

Each method is built with :func:`kdlab.methods.build_distiller` for one teacher/student
pair and trained on one fixed batch of random data with a training run's own step
(:func:`kdlab.training.step.train_step`: forward under autocast, backward through the grad
scaler, a step of SGD and of every optimiser of the method's own, e.g. SKD's critic), so the
numbers measure the method's compute and memory as it trains, not data loading. Preset
``cifar`` is the FCFD paper's Table 11 setting (ResNet32x4 -> ResNet8x4, 3x32x32, 100
classes, batch 64; Liu et al., ICLR 2023); preset ``cpu`` is a small pair that runs in
seconds on a CPU, ``tiny`` a smaller one for smoke runs (tests, the GPU script's dry run).
Detection presets (task ``detection``, random images with three random boxes each):
``scenes_det`` is the CPU pair of the Fashion-MNIST scenes (frcnn_tiny_r18 ->
frcnn_tiny_r10_slim, 1x64x64, batch 16); ``coco_det`` the FCFD paper's ResNet-101 ->
ResNet-18 Faster R-CNN FPN at batch 8 (App. D.2) on 800x800 images.

Rounds: with ``rounds > 1`` the methods take turns (round 1: every method, round 2: every
method again, ...), each round with a fresh build and its own seed (so FCFD draws other
paths). A method's ratio to KD is then the median over rounds of the ratio of the two
methods' mean step times *in the same round*: slow drifts of the machine's load hit both
sides of each ratio alike, which a single pass, method after method, cannot promise.

FLOP: each method's step (forward and backward of the whole distillation step) is counted once
per round with :class:`torch.utils.flop_counter.FlopCounterMode`, on one eager step before the
warm-up (outside the timed loop); GFLOP/s is that count over the mean step time, and "× mm"
its fraction of the rate of a large ``torch.mm`` measured once per bench run on the same device
and dtype (:mod:`kdlab.tools.bench.flops`; timed again after the methods and recorded beside it, so
that a drift of the machine's load shows). Sampled methods (FCFD's paths) count the paths drawn in
that step. ``channels_last`` and ``compile`` run the steps as ``train.channels_last`` and
``train.compile`` do; with ``compile`` one more untimed step comes first, and its time is the
compile cost reported.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the method's build and steps; on
CPU, the increase of the process's resident set size (RSS) over its level just before the
method is built, sampled every 2 ms by a background thread (short spikes between samples
can be missed, and memory the allocator had already reserved is not counted again).
"""

from __future__ import annotations

import csv
import ctypes
import functools
import gc
import io
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from kdlab.core.version import __version__
from kdlab.errors import UserError
from kdlab.nn.layout import use_channels_last
from kdlab.runtime.files import atomic_write_text
from kdlab.runtime.threads import thread_summary, wait_policy
from kdlab.tools.bench.flops import default_matmul_size, matmul_rate, step_flops
from kdlab.tools.bench.presets import (  # noqa: F401 - re-exported: kdlab.tools.bench.bench.PRESETS
    DEFAULT_METHODS,
    DETECTION_METHODS,
    PRESETS,
    SEGMENTATION_METHODS,
    Preset,
)


@dataclass(frozen=True)
class MethodSpec:
    """One benchmarked variant: ``label`` as written, the method name and its options."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    teacher_cache: bool = False  # the teacher's logits read from a teacher cache


def parse_methods(text: str) -> list[MethodSpec]:
    """``"ce,kd,fcfd:num_paths=1,k_min=2"`` -> ce, kd, fcfd{num_paths: 1, k_min: 2}.

    A comma-separated item holding ``=`` but no ``:`` continues the previous variant's
    options; values are read as YAML (``1`` is an int, ``true`` a bool).
    """
    groups: list[list[str]] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item:
            if not groups:
                raise UserError(f"--methods {text!r}: {item!r} has no method before it; "
                                "write e.g. fcfd:num_paths=1.")
            groups[-1].append(item)
        else:
            groups.append([item])
    if not groups:
        raise UserError("--methods is empty; give e.g. --methods ce,kd.")
    specs = []
    for head, *rest in groups:
        name, _, first = head.partition(":")
        options: dict[str, Any] = {}
        for kv in ([first] if first else []) + rest:
            key, eq, raw = kv.partition("=")
            if not eq or not key.strip():
                raise UserError(f"--methods: option {kv!r} must look like key=value.")
            try:
                options[key.strip()] = yaml.safe_load(raw)
            except yaml.YAMLError:
                options[key.strip()] = raw
        specs.append(MethodSpec(",".join([head, *rest]), name.strip(), options))
    return specs


@dataclass
class BenchResult:
    """One method's timings: ``steps`` timed steps per round, over ``rounds`` rounds."""

    label: str
    method: str
    options: dict[str, Any]
    steps: int
    ms_mean: float
    ms_std: float
    images_per_s: float
    peak_mib: float | None
    final_loss: float
    ratio_to_kd: float | None = None  # median over rounds of the same-round ratio
    rounds: int = 1
    ratio_to_ce: float | None = None  # the same, to the student alone (plain ``ce``)
    ms_median: float = 0.0
    ratio_min: float | None = None  # spread of the per-round ratios
    ratio_max: float | None = None
    round_ms: list[float] = field(default_factory=list)  # mean ms/iter of each round
    teacher_cache: bool = False  # timed with the teacher's logits read from a teacher cache
    gflop: float | None = None  # FLOP of one step (forward + backward), 1e9
    gflops: float | None = None  # achieved: gflop / mean step time
    mm_fraction: float | None = None  # gflops / the large-matmul rate of the same run
    compile_s: float | None = None  # the first (compiling) step under ``compile``


def merge_rounds(per_round: Sequence[BenchResult], times_ms: Sequence[float]) -> BenchResult:
    """One result from the rounds of one method: statistics over every timed step."""
    first = per_round[0]
    mean = statistics.fmean(times_ms)
    peaks = [r.peak_mib for r in per_round if r.peak_mib is not None]
    flops = [r.gflop for r in per_round if r.gflop is not None]
    gflop = statistics.fmean(flops) if flops else None
    compiles = [r.compile_s for r in per_round if r.compile_s is not None]
    return BenchResult(
        label=first.label, method=first.method, options=first.options, steps=first.steps,
        ms_mean=mean, ms_std=statistics.stdev(times_ms) if len(times_ms) > 1 else 0.0,
        images_per_s=first.images_per_s * first.ms_mean / mean,
        peak_mib=max(peaks) if peaks else None, final_loss=per_round[-1].final_loss,
        rounds=len(per_round), ms_median=statistics.median(times_ms),
        round_ms=[r.ms_mean for r in per_round], teacher_cache=first.teacher_cache,
        gflop=gflop, gflops=gflop / (mean / 1000) if gflop is not None else None,
        compile_s=compiles[0] if compiles else None,
    )


def set_mm_fractions(results: Sequence[BenchResult], matmul_gflops: float | None) -> None:
    """Each result's achieved GFLOP/s as a fraction of the large-matmul rate."""
    for r in results:
        if r.gflops is not None and matmul_gflops:
            r.mm_fraction = r.gflops / matmul_gflops


def set_ratios(results: Sequence[BenchResult]) -> None:
    """Ratios to the plain ``kd`` entry (with their spread) and to the plain ``ce`` entry (the
    student alone), each paired round by round; nothing where that entry is absent."""
    def paired(base: BenchResult, r: BenchResult) -> list[float]:
        return [a / b for a, b in zip(r.round_ms, base.round_ms, strict=True)]

    kd = next((r for r in results if r.method == "kd" and not r.options
               and not r.teacher_cache), None)
    ce = next((r for r in results if r.method == "ce" and not r.options), None)
    for r in results:
        if kd is not None:
            ratios = paired(kd, r)
            r.ratio_to_kd = statistics.median(ratios)
            r.ratio_min, r.ratio_max = min(ratios), max(ratios)
        if ce is not None:
            r.ratio_to_ce = statistics.median(paired(ce, r))


@dataclass
class BenchReport:
    meta: dict[str, Any]
    results: list[BenchResult]


# --------------------------------------------------------------------- hardware
def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU as results should name it: its model name, then family, model and widest
    vector unit (``AMD EPYC (family 25 model 17, AVX-512)``), since a virtual machine's model
    name is often generic and two CPUs of one name can differ in speed and in rounding."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            first.setdefault(key.strip(), value.strip())
    name = first.get("model name") or platform.processor() or platform.machine()
    flags = set(first.get("flags", "").split())
    vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                             ("avx", "AVX")) if flag in flags), None)
    detail = [f"family {first['cpu family']} model {first['model']}"] if (
        "cpu family" in first and "model" in first) else []
    detail += [vector] if vector else []
    return f"{name} ({', '.join(detail)})" if detail else name


def hardware(device: torch.device) -> str:
    """A one-line description of the machine the numbers come from."""
    cpu = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CPU: {cpu})"
    return cpu


# --------------------------------------------------------------------- memory
def _rss_bytes() -> int | None:
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_memory() -> None:
    gc.collect()
    try:  # glibc keeps freed memory mapped; hand it back so the baseline is honest
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryMeter:
    """Peak memory of a block: CUDA max allocated, or sampled RSS increase on CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._base = 0
        self._max = 0

    @staticmethod
    def label(device: torch.device) -> str:
        if device.type == "cuda":
            return "peak CUDA MiB (max_memory_allocated)"
        if _rss_bytes() is not None:
            return "peak RSS increase MiB (sampled)"
        return "peak memory (not measured here)"

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is not None and rss > self._max:
                self._max = rss

    def __enter__(self) -> MemoryMeter:
        _release_memory()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        rss = _rss_bytes()
        if rss is not None:
            self._base = self._max = rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        if hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            rss = _rss_bytes() or 0
            self.peak_mib = (max(self._max, rss) - self._base) / 2**20


# --------------------------------------------------------------------- timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _autocast_dtype(amp: str) -> torch.dtype | None:
    try:
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    except KeyError:
        raise UserError(f"--amp {amp!r} is not one of none, bf16, fp16.") from None


def with_teacher_cache(specs: Sequence[MethodSpec], task: str = "classification"
                       ) -> list[MethodSpec]:
    """``specs`` with, after each method that can train from a teacher cache (KD, DKD), the
    same method reading the teacher's logits from one (label ``METHOD+cache``)."""
    from kdlab.core.config import build_dataclass
    from kdlab.methods import METHODS
    from kdlab.training.cache_source import check_cache_use

    out: list[MethodSpec] = []
    for spec in specs:
        out.append(spec)
        cls = METHODS.get(spec.name).for_task(task)
        try:
            check_cache_use(cls, build_dataclass(cls.Config, spec.options,
                                                 where=f"method.{spec.name}"), task)
        except UserError:
            continue
        out.append(MethodSpec(f"{spec.label}+cache", spec.name, dict(spec.options), True))
    if len(out) == len(specs):
        raise UserError("--teacher-cache needs a method that can train from a teacher cache "
                        "in --methods, such as kd or dkd.")
    return out


def check_methods(specs: Sequence[MethodSpec], task: str = "classification") -> None:
    """Unknown names and options (of the methods' variants for ``task``) fail before any
    timing starts."""
    from kdlab.core.config import build_dataclass
    from kdlab.methods import METHODS

    for spec in specs:
        cls = METHODS.get(spec.name).for_task(task)
        build_dataclass(cls.Config, spec.options, where=f"method.{spec.name}")


def bench_optimisation(distiller: torch.nn.Module, device: torch.device, amp: str) -> Any:
    """What steps a benchmarked distiller: a training run's optimisation
    (:class:`kdlab.training.optimisation.Optimisation`) with the default SGD settings and a
    constant learning rate, the method's own optimisers (e.g. SKD's critic) and the AMP grad
    scaler included."""
    from kdlab.core.config import OptimConfig, ScheduleConfig
    from kdlab.training.optimisation import Optimisation

    params = [p for p in distiller.parameters() if p.requires_grad]
    return Optimisation.build(params, distiller.separate_optimizers(), OptimConfig(),
                              ScheduleConfig(name="constant", epochs=1), steps_per_epoch=1,
                              device=device, amp=amp)


def bench_method(
    spec: MethodSpec,
    *,
    teacher: str,
    student: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    amp: str = "none",
    train_size: int = 50_000,
    seed: int = 0,
    times_out: list[float] | None = None,
    task: str = "classification",
    channels_last: bool = False,
    compile: bool | str = False,
    count_flops: bool = True,
) -> BenchResult:
    """Build one method and time ``steps`` training steps after ``warmup`` untimed ones.

    The step times (ms) are appended to ``times_out`` when it is given. A spec with
    ``teacher_cache`` reads the teacher's logits (computed once, untimed) from a cache file
    of ``train_size`` images (:func:`kdlab.tools.teacher_cache.cache_for_batch`) in every
    step, instead of running the teacher. ``count_flops``: one eager step first, under the
    FLOP counter; ``compile``: a ``train.compile`` setting."""
    from kdlab.tasks import build_task
    from kdlab.training.compiling import CompiledModel, compile_run
    from kdlab.training.step import forward_losses, train_step

    _autocast_dtype(amp)  # an unknown --amp fails here
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, *input_shape, generator=gen).to(device)
    the_task = build_task(task)
    targets = the_task.example_targets(batch, num_classes, input_shape[1:], gen, device)
    index = torch.randint(0, train_size, (batch,), generator=gen).to(device)
    folder = tempfile.TemporaryDirectory(prefix="kdlab-bench-") if spec.teacher_cache else None
    with MemoryMeter(device) as meter:
        distiller = _bench_distiller(spec, teacher, student, input_shape, num_classes,
                                     train_size, the_task, seed, device)
        if folder is not None:
            _read_teacher_cache(distiller, folder.name, images, index, train_size, seed)
        optim = bench_optimisation(distiller, device, amp)
        if channels_last:
            distiller.to(memory_format=torch.channels_last)
            if images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
        step = functools.partial(train_step, optim=optim, images=images, targets=targets,
                                 index=index, device=device, amp=amp, method=spec.name)
        gflop = None
        if count_flops:
            counted = step_flops(lambda: forward_losses(distiller, images, targets, index,
                                                        device=device, amp=amp,
                                                        method=spec.name)[2])
            gflop = counted / 1e9 if counted is not None else None
            for o in optim.optimisers():
                o.zero_grad(set_to_none=True)
        compile_s = None
        model: torch.nn.Module = distiller
        if compile:
            model = compile_run(distiller, distiller, compile)
            assert isinstance(model, CompiledModel)
            step(model)
            compile_s = model.compile_seconds
        ms, final_loss = _timed_steps(step, model, warmup, steps, device)
    # free the networks before the next method is built (the closures share these cells)
    distiller = optim = step = model = None  # type: ignore[assignment]
    if folder is not None:
        folder.cleanup()
    if times_out is not None:
        times_out.extend(ms)
    mean = statistics.fmean(ms)
    return BenchResult(
        label=spec.label, method=spec.name, options=dict(spec.options), steps=steps,
        ms_mean=mean, ms_std=statistics.stdev(ms) if len(ms) > 1 else 0.0,
        images_per_s=batch / (mean / 1000), peak_mib=meter.peak_mib, final_loss=final_loss,
        ms_median=statistics.median(ms), round_ms=[mean], teacher_cache=spec.teacher_cache,
        gflop=gflop, gflops=gflop / (mean / 1000) if gflop is not None else None,
        compile_s=compile_s,
    )


def _bench_distiller(spec: MethodSpec, teacher: str, student: str,
                     input_shape: tuple[int, int, int], num_classes: int, train_size: int,
                     task: Any, seed: int, device: torch.device) -> Any:
    """The method's distiller on freshly built networks, in training mode at epoch 0, with a
    training set of ``train_size`` samples of random classes (CRD's class negatives)."""
    from kdlab.methods import METHODS, build_distiller
    from kdlab.models import build_model

    shape = dict(num_classes=num_classes, in_channels=input_shape[0], input_size=input_shape[1])
    s_model = build_model(student, **shape)
    method = METHODS.get(spec.name)
    t_model = build_model(teacher, **shape) if method.needs_teacher else None
    options = dict(spec.options)
    if "teacher" in getattr(method.Config, "__dataclass_fields__", {}):
        # online methods train their own teacher: the pair's teacher architecture
        options.setdefault("teacher", teacher)
    distiller = build_distiller(spec.name, options, s_model, t_model,
                                train_size=train_size, task=task).to(device)
    label_gen = torch.Generator().manual_seed(seed + 1)
    distiller.use_train_labels(torch.randint(0, num_classes, (train_size,), generator=label_gen))
    distiller.train()
    distiller.set_epoch(0, 1)
    return distiller


def _read_teacher_cache(distiller: Any, folder: str, images: torch.Tensor, index: torch.Tensor,
                        train_size: int, seed: int) -> None:
    """Make ``distiller`` read the teacher's logits of ``images`` (computed once, here) from a
    cache file in ``folder`` instead of running the teacher."""
    from kdlab.methods.base import Batch
    from kdlab.tools.teacher_cache import cache_for_batch
    from kdlab.training.cache_source import CacheSource

    assert distiller.teacher_source is not None
    logits = distiller.teacher_source.logits(Batch(images))
    distiller.use_teacher_source(CacheSource(cache_for_batch(
        folder, index, logits, train_size, seed=seed)))


def _timed_steps(step: Any, model: torch.nn.Module, warmup: int, steps: int,
                 device: torch.device) -> tuple[list[float], float]:
    """``warmup`` untimed then ``steps`` timed training steps: their times (ms) and the last
    loss."""
    times: list[float] = []
    loss = torch.zeros(())
    for i in range(warmup + steps):
        _synchronize(device)
        t0 = time.perf_counter()
        loss = step(model)[2]
        _synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return times, float(loss.detach())


def _prime(student: str, input_shape: tuple[int, int, int], num_classes: int, batch: int,
           device: torch.device, amp: str, task: str = "classification") -> None:
    """One untimed, unmeasured training step, so that one-time library start-up (kernel
    libraries, thread pools, the autograd engine) is not charged to the first method."""
    from kdlab.models import build_model
    from kdlab.tasks import build_task

    net = build_model(student, num_classes=num_classes, in_channels=input_shape[0],
                      input_size=input_shape[1]).to(device)
    the_task = build_task(task)
    dtype = _autocast_dtype(amp)
    x = torch.randn(batch, *input_shape, device=device)
    y = the_task.example_targets(batch, num_classes, input_shape[1:], torch.Generator(), device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = the_task.loss(the_task.features(net, x, y), y)
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9).step()
    _synchronize(device)
    del net, x, y, loss


def run_bench(
    specs: Sequence[MethodSpec],
    *,
    preset: str = "cifar",
    pair: str | None = None,
    batch: int | None = None,
    steps: int = 20,
    warmup: int = 5,
    rounds: int = 1,
    device: torch.device | str = "cpu",
    amp: str = "none",
    command: str = "",
    progress: bool = True,
    teacher_cache: bool = False,
    channels_last: bool | str = "auto",
    compile: bool | str = False,
    flops: bool = True,
    matmul_size: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> BenchReport:
    """Benchmark every method in ``specs`` on one pair, ``rounds`` times in turn; ratios are
    ms/iter over kd's, paired by round (see the module docstring). ``teacher_cache`` adds,
    after each method that can train from a teacher cache, that method reading the
    teacher's logits from one (:func:`with_teacher_cache`). ``channels_last`` and
    ``compile`` take the values of ``train.channels_last`` and ``train.compile``; ``flops``
    adds GFLOP per step, GFLOP/s and the fraction of the large-matmul rate (of a
    ``matmul_size`` square product; default :func:`kdlab.tools.bench.flops.default_matmul_size`);
    ``input_shape`` overrides the preset's (the scaling sweep's image sizes)."""
    if preset not in PRESETS:
        raise UserError(f"Unknown preset {preset!r}; use one of {', '.join(PRESETS)}.")
    p = PRESETS[preset]
    teacher, student = _pair(pair, p.teacher, p.student)
    if steps < 1 or warmup < 0 or rounds < 1:
        raise UserError("--steps and --rounds must be at least 1 and --warmup at least 0.")
    batch = batch or p.batch
    if batch < 2:
        raise UserError("--batch must be at least 2 (BatchNorm needs two samples in training).")
    device = torch.device(device)
    dtype = _autocast_dtype(amp)
    check_methods(specs, p.task)
    if teacher_cache:
        specs = with_teacher_cache(specs, p.task)
    nhwc = use_channels_last(channels_last, device)
    if compile:
        from kdlab.training.compiling import backend_of

        backend_of(compile)
    shape = tuple(input_shape) if input_shape else p.input_shape
    meta = {
        "task": p.task,
        "teacher": teacher, "student": student, "input_shape": list(shape),
        "num_classes": p.num_classes, "batch": batch, "steps": steps, "warmup": warmup,
        "rounds": rounds, "device": str(device), "amp": amp, **_machine(device),
        "command": command, "teacher_cache": teacher_cache,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "channels_last": nhwc, "compile": compile,
    }
    _prime(student, shape, p.num_classes, batch, device, amp, p.task)
    mm = None
    if flops:
        size = matmul_size or default_matmul_size(device)
        mm = matmul_rate(device, dtype or torch.float32, size=size)
        meta.update(matmul_gflops=round(mm, 2), matmul=f"{size}x{size} torch.mm, "
                    f"{str(dtype or torch.float32).removeprefix('torch.')}")
    per_round: list[list[BenchResult]] = [[] for _ in specs]
    times: list[list[float]] = [[] for _ in specs]
    for rnd in range(rounds):
        for i, spec in enumerate(specs):
            if progress:
                where = f" (round {rnd + 1}/{rounds})" if rounds > 1 else ""
                print(f"  {spec.label}{where} ...", flush=True)
            per_round[i].append(bench_method(
                spec, teacher=teacher, student=student, input_shape=shape,
                num_classes=p.num_classes, batch=batch, steps=steps, warmup=warmup,
                device=device, amp=amp, train_size=p.train_size, seed=rnd, times_out=times[i],
                task=p.task, channels_last=nhwc, compile=compile, count_flops=flops,
            ))
    results = [merge_rounds(r, t) for r, t in zip(per_round, times, strict=True)]
    set_ratios(results)
    set_mm_fractions(results, mm)
    if flops:  # timed again after the methods: how far the machine drifted meanwhile
        meta["matmul_gflops_end"] = round(matmul_rate(device, dtype or torch.float32,
                                                      size=size), 2)
        meta["load_end"] = load_average()
    return BenchReport(meta, results)


def _pair(pair: str | None, teacher: str, student: str) -> tuple[str, str]:
    """``--pair TEACHER:STUDENT`` (both registered networks), else the preset's pair."""
    from kdlab.models import MODELS

    if pair:
        teacher, sep, student = pair.partition(":")
        if not sep or not teacher or not student:
            raise UserError(f"--pair {pair!r} must look like TEACHER:STUDENT, "
                            "e.g. resnet32x4:resnet8x4.")
    MODELS.get(teacher)
    MODELS.get(student)
    return teacher, student


def _machine(device: torch.device) -> dict[str, Any]:
    """What a report records of the machine and software at the start: hardware, versions,
    the memory meter, the load and the thread settings."""
    return {"hardware": hardware(device), "torch": torch.__version__, "kdlab": __version__,
            "python": platform.python_version(), "memory": MemoryMeter.label(device),
            "load": load_average(), "threads": torch.get_num_threads(),
            "wait_policy": wait_policy(), "thread_policy": thread_summary()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (``uptime``), recorded beside every timing."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------- output
def format_table(report: BenchReport) -> str:
    m = report.meta
    shape = "x".join(str(s) for s in m["input_shape"])
    rounds = m.get("rounds", 1)
    per = f" per round, {rounds} rounds in turn" if rounds > 1 else ""
    layout = "channels-last" if m.get("channels_last") else "NCHW"
    compiled = f", compile {m['compile']}" if m.get("compile") else ""
    lines = [
        f"kdlab bench ({m.get('task', 'classification')}): {m['teacher']} -> {m['student']}, "
        f"input {shape}, {m['num_classes']} classes, batch {m['batch']}, {m['steps']} timed "
        f"steps after {m['warmup']} warm-up{per}, amp {m['amp']}, {layout}{compiled}",
        f"device {m['device']}: {m['hardware']}; torch {m['torch']}; kdlab {m['kdlab']}; "
        f"load {m.get('load', 'n/a')}",
        m.get("thread_policy", f"CPU threads: {m.get('threads', '?')}"),
    ]
    if m.get("matmul_gflops"):
        end = (f" (after the methods: {m['matmul_gflops_end']:.1f}, load {m['load_end']})"
               if m.get("matmul_gflops_end") else "")
        lines.append(f"large-matmul rate: {m['matmul_gflops']:.1f} GFLOP/s{end} ({m['matmul']})"
                     "; GFLOP = forward + backward of one step")
    lines += [f"command: {m['command']}", ""]
    mem = m["memory"]
    width = max([len("method")] + [len(r.label) for r in report.results])
    ratio_head = "× kd (rounds' range)" if rounds > 1 else "× kd"
    lines.append(f"{'method':<{width}}  {'images/s':>9}  {'ms/iter mean ± std':>19}  "
                 f"{'median':>8}  {'GFLOP':>7}  {'GFLOP/s':>8}  {'× mm':>5}  "
                 f"{mem:>{len(mem)}}  {'× ce':>5}  {ratio_head}")
    for r in report.results:
        peak = f"{r.peak_mib:.1f}" if r.peak_mib is not None else "n/a"
        ratio = "-"
        if r.ratio_to_kd is not None:
            ratio = f"{r.ratio_to_kd:.2f}"
            if rounds > 1 and r.ratio_min is not None:
                ratio += f" ({r.ratio_min:.2f}-{r.ratio_max:.2f})"
        timing = f"{r.ms_mean:.2f} ± {r.ms_std:.2f}"
        to_ce = f"{r.ratio_to_ce:.2f}" if r.ratio_to_ce is not None else "-"
        gflop = f"{r.gflop:.3f}" if r.gflop is not None else "-"
        rate = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        frac = f"{r.mm_fraction:.2f}" if r.mm_fraction is not None else "-"
        lines.append(f"{r.label:<{width}}  {r.images_per_s:>9.1f}  {timing:>19}  "
                     f"{r.ms_median:>8.2f}  {gflop:>7}  {rate:>8}  {frac:>5}  "
                     f"{peak:>{len(mem)}}  {to_ce:>5}  {ratio}")
    compiles = [f"{r.label} {r.compile_s:.1f} s" for r in report.results
                if r.compile_s is not None]
    if compiles:
        lines.append("compile (first step, untimed): " + ", ".join(compiles))
    if any(not math.isfinite(r.final_loss) for r in report.results):
        lines.append("warning: a method's loss was not finite on the random batch.")
    return "\n".join(lines)


def report_dict(report: BenchReport) -> dict[str, Any]:
    return {"meta": report.meta, "results": [asdict(r) for r in report.results]}


def check_output_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix not in (".csv", ".json"):
        raise UserError(f"--out {str(p)!r} must end in .csv or .json.")
    if p.is_dir():
        raise UserError(f"--out {str(p)!r} is a folder; give a .csv or .json file name.")
    return p


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_report(report: BenchReport, path: str | Path) -> Path:
    """Write the results as JSON, or CSV with ``# key: value`` metadata lines first."""
    p = check_output_path(path)
    if p.suffix == ".json":
        atomic_write_text(p, json.dumps(report_dict(report), indent=2) + "\n")
        return p
    buf = io.StringIO()
    for key, value in report.meta.items():
        buf.write(f"# {key}: {value}\n")
    columns = ["method", "options", "steps", "rounds", "images_per_s", "ms_mean", "ms_std",
               "ms_median", "gflop", "gflops", "mm_fraction", "peak_mib", "ratio_to_kd",
               "ratio_min", "ratio_max", "ratio_to_ce", "final_loss", "compile_s",
               "threads", "wait_policy", "load_1min"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in report.results:
        writer.writerow({
            "method": r.label, "options": json.dumps(r.options), "steps": r.steps,
            "rounds": r.rounds, "images_per_s": f"{r.images_per_s:.2f}",
            "ms_mean": f"{r.ms_mean:.3f}", "ms_std": f"{r.ms_std:.3f}",
            "ms_median": f"{r.ms_median:.3f}",
            "peak_mib": "" if r.peak_mib is None else f"{r.peak_mib:.1f}",
            "ratio_to_kd": "" if r.ratio_to_kd is None else f"{r.ratio_to_kd:.3f}",
            "ratio_min": "" if r.ratio_min is None else f"{r.ratio_min:.3f}",
            "ratio_max": "" if r.ratio_max is None else f"{r.ratio_max:.3f}",
            "ratio_to_ce": "" if r.ratio_to_ce is None else f"{r.ratio_to_ce:.3f}",
            "final_loss": f"{r.final_loss:.4f}",
            "gflop": _fmt(r.gflop, 4), "gflops": _fmt(r.gflops, 2),
            "mm_fraction": _fmt(r.mm_fraction, 3), "compile_s": _fmt(r.compile_s, 1),
            "threads": report.meta.get("threads", ""),
            "wait_policy": report.meta.get("wait_policy", ""),
            "load_1min": str(report.meta.get("load", "")).split(" ")[0],
        })
    atomic_write_text(p, buf.getvalue())
    return p
