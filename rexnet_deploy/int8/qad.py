"""INT8 by quantization-aware distillation (QAD), on the CPU, from unlabelled calibration photos.

The recipe (``--recipe qad`` / ``--qad-steps N``):

1. **Post-training quantization in PyTorch**: symmetric int8, per-channel weights, per-tensor
   activations, ranges from the calibration sample; the squeeze-excitation gates stay in FP32
   (OpenVINO's own NNCF backend leaves those convolutions in f32 too; the PyTorch quantizers
   quantize them unless told, and they cost agreement). Two quantizers, one per target format:
   NNCF (``quantizer="nncf"``) for OpenVINO IR, and NVIDIA ModelOpt (``"modelopt"``, BatchNorm
   folded into the convolutions first, as TensorRT's Q/DQ fusions need) for Q/DQ ONNX.
2. **Distillation**: the fake-quantized model is fine-tuned so that its logits match the FP32
   model's on augmented views (random resized crops, flips) of the calibration photos: KL
   divergence at temperature 2, Adam on every floating-point parameter (straight-through
   rounding): the weights, and with NNCF the quantizers' scales too (ModelOpt's ranges are fixed
   buffers), the model kept in eval mode so BatchNorm statistics stay frozen. No labels are
   used: the FP32 model is the teacher, which is what "agrees with FP32" asks for.
3. **Export**: NNCF: :func:`strip` to plain fake-quantize ops, which the OpenVINO backend converts
   to IR (FakeQuantize ops the CPU plugin runs as int8). ModelOpt: ``torch.onnx.export``
   of its quantizers as QuantizeLinear/DequantizeLinear pairs (symmetric int8, zero-point 0),
   the explicit-quantization graph TensorRT compiles and ONNX Runtime runs.

Only builds import this module's heavy parts (torch, NNCF + torchao, ModelOpt); engines never do.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..errors import BuildError, UsageError
from ..models import DEPTHWISE, GLOBAL_POOL, SE_GATES, fold_batchnorm
from .qdq import quantize_linear_count, require_trt_rules
from .recipes import DEFAULT_STEPS, check_steps

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..log import BuildLog

# NNCF compiles its CPU fake-quantize kernels on first use (about a minute on 2 cores, several when the
# machine is busy); NNCF's own 60 s limit then fails the build, so allow more unless the user chose.
EXTENSION_TIMEOUT_S = "900"


# ModelOpt's amax ranges stay fixed while the weights train (NNCF learns its scales too), so its
# weights take smaller steps: on dev/ lr 5e-5 ended below PTQ (29.5 dB against 31.9), lr 1e-5
# above it (34.3 -> 37.2 dB after 100 steps; min cosine 0.9989 -> 0.9994).
MODELOPT_LR = 1e-5
# ...and runs every step, without the early stop: on dev/ the early stop ended it at step 70 (kept 50),
# 37.0 dB / min cosine 0.9996 but top-1 0.920 and decisive 0.988, against 37.2 dB / 0.9994 / 0.950 /
# 0.994 for the 100 steps the TensorRT default shipped with (its build has no 3-minute budget).


@dataclass(frozen=True)
class QadConfig:
    steps: int = DEFAULT_STEPS
    lr: float = 5e-5
    batch: int = 16
    temperature: float = 2.0
    seed: int = 0
    overflow_fix: str = "enable"          # NNCF OverflowFix: 7-bit weights, safe on CPUs without VNNI
    # NNCF preset: "mixed" = asymmetric activations (u8 + zero point). ReXNet's SiLU outputs reach down
    # to only -0.28, so a symmetric range wastes most of its negative half; on dev/ it measured
    # 0.94 agreement / 34.6 dB after 100 steps against 0.92 / 32.7 dB for "performance" (symmetric).
    # The ModelOpt (Q/DQ) path ignores it: TensorRT takes symmetric int8 only.
    activations: str = "mixed"
    # ModelOpt (Q/DQ) path: leave the depthwise convolutions without Q/DQ, so TensorRT runs them in
    # FP16 (ONNX Runtime in FP32). Symmetric int8 on their SiLU inputs is what cost the Q/DQ graph
    # most: on dev/ PTQ measured 0.95 / 32.0 dB with them unquantized against ~0.89 / 28 dB.
    float_depthwise: bool = True
    # NNCF ignored-scope patterns; the ModelOpt path keeps the SE gates unquantized when there are any
    ignored_patterns: tuple[str, ...] = (SE_GATES.nncf_pattern,)
    # Early stop: ``holdout`` of the calibration tensors are kept out of training; every ``check_every``
    # steps the student's SQNR against the teacher's logits on them is measured, and distillation stops
    # once ``patience`` checks in a row have not beaten the best by more than ``min_gain_db`` (the
    # best student is kept), though not before ``min_steps``: on the stand-in weights the held-out SQNR
    # first dipped below PTQ's (30.9 dB at step 0, lower at steps 10 and 20) while Adam's moments
    # settled. ``steps`` is the cap. patience=0 turns it off (all ``steps`` run).
    holdout: float = 0.1
    check_every: int = 10
    min_steps: int = 40
    patience: int = 2
    min_gain_db: float = 0.2
    # Training views are resized to ``train_size`` pixels (None: the model's input size). A step's cost
    # scales with the pixel count, and the held-out checks stay at full size.
    train_size: int | None = None
    # Learning-rate schedule: ``warmup`` steps of linear warm-up, then constant or a cosine decay to 0
    # at ``steps`` (the cap).
    warmup: int = 0
    schedule: str = "constant"
    # The training views' random resized crops cover ``min_crop_area``..1 of the calibration image.
    # Smaller crops show the teacher views it is less sure of (the stand-in knows the calibration
    # photos by heart), closer to the near ties of unseen photos that decide top-1 and top-2.
    min_crop_area: float = 0.35
    # Distil in channels-last (NHWC) memory: oneDNN's convolutions and their backward run faster so
    # (nncf_fused.py covers that layout); the student goes back to NCHW before export. The teacher
    # runs on a channels-last copy; the FP32 reference itself is left as it is.
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_steps(self.steps)
        if not self.lr > 0 or not self.batch >= 1 or not self.temperature > 0:
            raise UsageError("QAD needs lr > 0, batch >= 1 and temperature > 0")
        if not 0 <= self.holdout < 1 or self.check_every < 1 or self.patience < 0:
            raise UsageError("QAD needs 0 <= holdout < 1, check_every >= 1 and patience >= 0")
        if self.schedule not in ("constant", "cosine") or self.warmup < 0:
            raise UsageError(f"QAD schedule must be constant or cosine with warmup >= 0, got {self.schedule!r}")
        if self.train_size is not None and self.train_size < 32:
            raise UsageError(f"QAD train_size must be at least 32 pixels, got {self.train_size}")
        if not 0 < self.min_crop_area <= 1:
            raise UsageError(f"QAD min_crop_area must be in (0, 1], got {self.min_crop_area}")
        if self.activations not in ("mixed", "performance"):
            raise UsageError(f"QAD activations preset must be mixed or performance, got {self.activations!r}")


# The NNCF (OpenVINO) student's schedule: batches of 24 views at 160 px (a step costs half a 224 px one), a linear
# warm-up over 10 steps to lr 1e-4, then a cosine decay to 0 at the cap (110 steps), the early stop
# judged over the last quarter (nncf_config). At an 80-step cap it matched the 224 px constant-lr
# 5e-5 run on dev/ (35.1 against 35.3 dB) in half its time; the fused fake-quantize kernels
# (nncf_fused.py: a step 1.09 -> 0.76 s) then paid for 120 steps in the same 3-minute build: dev/
# 35.2 / 35.5 / 35.2 dB over seeds 0-2 against 35.1 / 34.6 / 34.0 at 80, top-1 0.950 / 0.945 / 0.955
# against 0.935 / 0.950 / 0.935 (100 steps: 34.7 / 35.1 / 34.9). Measured worse: lr 1e-4 without
# warm-up (dipped to 22 dB), a 60-step cosine (33.7 dB), 128 px, an added logit MSE term (30.9 dB).
# Channels-last with vectorized kernels: a step 0.84 -> 0.66 s, the same figures over seeds 0-2 (35.25 dB
# mean against 35.32). The time went to batches of 24 (110 steps: the build stays under 3 min): over seeds
# 0-2 35.93 dB mean against 35.25, decisive 0.994-1.000 and top-2 0.995-1.000 on every seed (0.981-0.994,
# 0.990-1.000 at batch 16); 150 steps of 16 measured 35.50 dB, 120 of 24 36.08 dB but a 3-minute build.
# docs/int8-fidelity.md has the tables.
NNCF_SCHEDULE: dict[str, Any] = {"steps": 110, "batch": 24, "lr": 1e-4, "train_size": 160, "warmup": 10,
                                  "schedule": "cosine", "channels_last": True}


def nncf_config(steps: int | None = None, **overrides: Any) -> QadConfig:
    """The QAD configuration of the NNCF student (OpenVINO's ``qad`` recipe): :data:`NNCF_SCHEDULE`,
    ``steps`` (``--qad-steps``) as the cap when given. The early stop is judged over the cosine's last
    quarter only (``min_steps`` 3/4 of the cap): before that the lr is still high and the held-out
    SQNR noisy (a 120-step cap judged from step 60 stopped at 60 and kept 31.1 dB)."""
    cap = NNCF_SCHEDULE["steps"] if steps is None else steps
    return QadConfig(**{**NNCF_SCHEDULE, "steps": cap, "min_steps": 3 * cap // 4, **overrides})


@dataclass
class QadResult:
    model: Any                             # the fake-quantized torch module (NNCF or ModelOpt), fine-tuned
    record: dict[str, Any] = field(default_factory=dict)


QUANTIZERS = ("nncf", "modelopt")


def quantize_and_distill(teacher: "torch.nn.Module", tensors: Sequence[np.ndarray], config: QadConfig,
                         log: "BuildLog", *, quantizer: str = "nncf", recipe: str = "qad") -> QadResult:
    """Steps 1 and 2: PTQ in PyTorch on ``tensors`` (preprocessed calibration images, CHW float32),
    then ``config.steps`` distillation steps against ``teacher`` (the FP32 model, unchanged)."""
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    import torch

    teacher = teacher.eval()
    x = stack(tensors)
    torch.set_num_threads(_distill_threads()[0])  # the PTQ's forward passes too (distill sizes its own)
    t0 = time.perf_counter()
    log(f"quantizing in PyTorch with {quantizer} on {len(x)} calibration images (SE gates kept FP32)")
    student, ptq = (_nncf_ptq if quantizer == "nncf" else _modelopt_ptq)(teacher, x, config, log)
    log(f"quantized in {time.perf_counter() - t0:.0f} s")
    method = "quantization-aware distillation" if config.steps else "post-training quantization (PyTorch)"
    record: dict[str, Any] = {
        "tool": quantizer, "version": ptq["version"], "method": method, "recipe": recipe,
        "ptq": {**ptq, "images": len(x), "ignored_patterns": list(config.ignored_patterns),
                "seconds": round(time.perf_counter() - t0, 1)},
        "config": asdict(config),
    }
    if not config.steps:
        record["distillation"] = None
    elif quantizer == "nncf":
        from . import nncf_fused

        with nncf_fused.installed(log) as kernels:  # a third fewer seconds a step (nncf_fused.py says why)
            record["distillation"] = {**distill(student, teacher, x, config, log), **kernels}
    else:
        record["distillation"] = distill(student, teacher, x, config, log)
    return QadResult(student, record)


def stack(tensors: Sequence[np.ndarray]) -> "torch.Tensor":
    """Preprocessed calibration images (CHW or NCHW float32 arrays) as one NCHW float32 tensor."""
    import torch

    return torch.from_numpy(np.concatenate([np.asarray(t, np.float32).reshape(-1, *np.shape(t)[-3:]) for t in tensors]))


def _nncf_ptq(teacher, x, config: QadConfig, log: "BuildLog"):
    nncf = _import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    chunks = [x[i:i + 25] for i in range(0, len(x), 25)]  # batched: NNCF's per-item hooks cost ~0.3 s/call
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(config.overflow_fix))
    with library_output(log):
        # subset_size counts dataset items, here batches: all of them
        student = nncf.quantize(copy.deepcopy(teacher), nncf.Dataset(chunks), subset_size=len(chunks),
                                preset=nncf.QuantizationPreset(config.activations),
                                ignored_scope=nncf.IgnoredScope(patterns=list(config.ignored_patterns), validate=False),
                                advanced_parameters=advanced)
    return student, {"tool": "nncf (PyTorch)", "version": nncf.__version__, "overflow_fix": config.overflow_fix,
                     "preset": config.activations,
                     "activations": "asymmetric" if config.activations == "mixed" else "symmetric"}


def _modelopt_ptq(teacher, x, config: QadConfig, log: "BuildLog"):
    import torch

    mtq = _import_modelopt()
    student = fold_batchnorm(copy.deepcopy(teacher)).eval()
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)  # int8, per-channel weights (axis 0), per-tensor activations, max
    kept = [SE_GATES] * bool(config.ignored_patterns) + [DEPTHWISE] * config.float_depthwise + [GLOBAL_POOL]
    cfg["quant_cfg"] += [{"quantizer_name": layer.modelopt_pattern, "enable": False} for layer in kept]

    def forward_loop(model) -> None:
        with torch.no_grad():
            for i in range(0, len(x), 25):
                model(x[i:i + 25])

    with library_output(log, logger_name="modelopt"):
        student = mtq.quantize(student, cfg, forward_loop=forward_loop)
    import modelopt

    return student, {"tool": "modelopt (PyTorch)", "version": modelopt.__version__, "calibration": "max",
                     "activations": "symmetric (TensorRT's Q/DQ)",
                     "unquantized": [layer.description for layer in kept],
                     "batchnorm": "folded into the convolutions", "signed_activations": True}


def distill(student: "torch.nn.Module", teacher: "torch.nn.Module", x: "torch.Tensor", config: QadConfig,
            log: "BuildLog") -> dict[str, Any]:
    """Fine-tune ``student`` (fake-quantized) toward ``teacher``'s logits on augmented views of
    ``x``, for at most ``config.steps`` steps, stopping early on a held-out SQNR plateau (see
    :class:`QadConfig`); returns the steps run, the loss and held-out curves, the stop and the time."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(config.seed)
    student.eval()  # BatchNorm statistics stay those of the FP32 model
    teacher.eval()
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    if config.channels_last:
        teacher = copy.deepcopy(teacher).to(memory_format=layout)
        student.to(memory_format=layout)
    # quantizers also hold integer parameters (bit widths, signedness): train floating-point ones only
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in student.parameters():
        p.requires_grad_(p.is_floating_point())
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _lr_factor(i, config))
    t = config.temperature
    # a seeded held-out split of the calibration tensors (never trained on) for the early stop
    n_held = int(round(config.holdout * len(x))) if config.patience and len(x) >= 10 else 0
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed + 1))
    held, train = x[order[:n_held]], x[order[n_held:]]
    threads, threads_why = _distill_threads()
    torch.set_num_threads(threads)  # left so for the build's later stages: the machine is as busy
    schedule = (f"{config.warmup} warm-up steps, " if config.warmup else "") + config.schedule
    size = config.train_size or x.shape[-1]
    log(f"distilling {config.steps} steps{' at most' if n_held else ''} toward the FP32 logits (KL at temperature {t:g}, Adam lr "
        f"{config.lr:g} ({schedule}), batch {config.batch} at {size} px{' channels-last' * config.channels_last}, {threads} thread{'s' * (threads != 1)} ({threads_why})"
        + (f"; early stop on {n_held} held-out images' SQNR, checked every {config.check_every} steps)"
           if n_held else ")"))
    with torch.inference_mode():
        held_target = _logits(teacher, held, config.batch) if n_held else None
    losses: list[float] = []
    checks: list[tuple[int, float]] = []  # (step, held-out SQNR dB)
    best: tuple[int, float, dict[str, Any] | None] = (0, -np.inf, None)
    stop = "step budget"
    timing = {"teacher_s": 0.0, "student_s": 0.0, "check_s": 0.0}
    t0 = time.perf_counter()
    if n_held:
        best = _check(student, held, held_target, config.batch, 0, checks, timing, best)
    step = 0
    for step in range(1, config.steps + 1):
        idx = torch.randperm(len(train), generator=gen)[:config.batch]
        views = augment(train[idx], gen, min_area=config.min_crop_area)
        if config.train_size and config.train_size != views.shape[-1]:
            views = F.interpolate(views, size=(config.train_size, config.train_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        views = views.contiguous(memory_format=layout)
        t1 = time.perf_counter()
        with torch.inference_mode():  # the teacher's logits once per augmented batch, no autograd records
            teacher_logits = teacher(views)
        teacher_logits = teacher_logits.clone()
        t2 = time.perf_counter()
        student_logits = student(views)
        loss = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                        log_target=True, reduction="batchmean") * t * t
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        timing["teacher_s"] += t2 - t1
        timing["student_s"] += time.perf_counter() - t2
        losses.append(loss.item())
        log.progress("quantization-aware distillation", step, config.steps)
        if not np.isfinite(losses[-1]):
            raise BuildError(f"distillation diverged at step {step} (loss {losses[-1]}); try a smaller lr")
        if n_held and step % config.check_every == 0:
            best = _check(student, held, held_target, config.batch, step, checks, timing, best)
            if step >= config.min_steps and len(checks) > config.patience and _plateau(checks, config):
                stop = f"held-out SQNR plateau (no gain > {config.min_gain_db:g} dB in {config.patience} checks)"
                break
    if n_held and step and step % config.check_every:  # the last steps are checked too, not judged unseen
        best = _check(student, held, held_target, config.batch, step, checks, timing, best)
    kept = step
    if n_held and best[2] is not None and best[0] != step:
        student.load_state_dict(best[2])  # the best held-out student, not the last
        kept = best[0]
    for p in student.parameters():
        p.requires_grad_(False)
    if config.channels_last:
        student.to(memory_format=torch.contiguous_format)  # NCHW again for the export
    curve = [round(float(np.mean(losses[i:i + 10])), 5) for i in range(0, len(losses), 10)] or [float("nan")]
    seconds = time.perf_counter() - t0
    log(f"distilled {step} steps in {seconds:.0f} s (KL {curve[0]:.4f} → {curve[-1]:.4f}; stopped: {stop}"
        + (f"; kept step {kept}, held-out SQNR {checks[0][1]:.1f} → {best[1]:.1f} dB" if n_held else "")
        + f"; teacher {timing['teacher_s']:.0f} s, student {timing['student_s']:.0f} s, checks {timing['check_s']:.0f} s)")
    return {"steps": step, "max_steps": config.steps, "kept_step": kept, "stopped": stop,
            "lr": config.lr, "lr_schedule": schedule, "batch": config.batch, "train_size": size,
            "temperature": t, "loss": "kl", "memory_format": "channels_last" if config.channels_last else "nchw",
            "loss_curve_every_10_steps": curve,
            "held_out": ({"images": n_held, "every": config.check_every, "patience": config.patience,
                          "min_gain_db": config.min_gain_db,
                          "sqnr_db_curve": [[s_, round(db, 2)] for s_, db in checks]} if n_held else None),
            "threads": threads, "threads_why": threads_why, "seconds": round(seconds, 1),
            "seconds_split": {k: round(v, 1) for k, v in timing.items()},
            "data": f"augmented calibration images (random resized crop {config.min_crop_area:g}-1, flip); no labels"}


def _lr_factor(i: int, config: QadConfig) -> float:
    """The learning rate of step ``i + 1`` as a fraction of ``config.lr``."""
    if i < config.warmup:
        return (i + 1) / config.warmup
    if config.schedule == "cosine":
        span = max(1, config.steps - config.warmup)
        return 0.5 * (1 + np.cos(np.pi * min(1.0, (i - config.warmup) / span)))
    return 1.0


def _plateau(checks: list[tuple[int, float]], config: QadConfig) -> bool:
    """No check among the last ``patience`` beat the best before them by more than ``min_gain_db``."""
    before = max(db for _, db in checks[:-config.patience])
    return max(db for _, db in checks[-config.patience:]) <= before + config.min_gain_db


def _check(student, held, target, batch: int, step: int, checks: list, timing: dict, best: tuple) -> tuple:
    """Measure the held-out SQNR (dB) of the student's logits; returns the best (step, dB, state)."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        out = _logits(student, held, batch)
    db = float(10 * torch.log10((target ** 2).sum() / ((out - target) ** 2).sum().clamp_min(1e-20)))
    checks.append((step, db))
    if db > best[1]:
        best = (step, db, {k: v.detach().clone() for k, v in student.state_dict().items()})
    timing["check_s"] += time.perf_counter() - t0
    return best


def _logits(model, x, batch: int):
    import torch

    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def _distill_threads() -> tuple[int, str]:
    """Distillation is the build's longest stage: torch's threads for it, and why. Every core this
    process may use, less those other processes are busy on now (two jobs of one thread per core
    wait on each other: 313 s against 138 s for ONNX Runtime's default 40 steps beside another
    build on 2 vCPUs, ``rexnet_deploy.cpu_load``), unless the user pinned a count (OMP_NUM_THREADS).
    Torch's result depends on its thread count in the last bits, so a pinned count is also what
    makes two builds on one machine identical whatever else it runs."""
    import torch

    from .. import cpu_load

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores = len(cpu_load.allowed_cpus())
    elsewhere = cpu_load.busy_elsewhere()
    threads = cpu_load.free_threads(cores, elsewhere)
    why = "every core" if threads == cores else f"other processes busy on {elsewhere:.1f} of {cores} cores"
    return threads, why


def augment(x: "torch.Tensor", gen: "torch.Generator", min_area: float = QadConfig.min_crop_area) -> "torch.Tensor":
    """Random resized crops (area ``min_area``–1, aspect 3/4–4/3) back to the input size, half of
    them flipped: new views of the calibration photos in the already normalised tensor space."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    out = torch.empty_like(x)
    u = torch.rand(n, 5, generator=gen).numpy()
    for i in range(n):
        area = min_area + (1 - min_area) * u[i, 0]
        ratio = float(np.exp(np.log(3 / 4) + u[i, 1] * np.log(16 / 9)))
        ch = min(h, max(8, int(round(h * np.sqrt(area / ratio)))))
        cw = min(w, max(8, int(round(w * np.sqrt(area * ratio)))))
        top = int(u[i, 2] * (h - ch + 1))
        left = int(u[i, 3] * (w - cw + 1))
        view = F.interpolate(x[i:i + 1, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                             align_corners=False)
        out[i] = view[0].flip(-1) if u[i, 4] < 0.5 else view[0]
    return out


def strip(student: "torch.nn.Module", chw: tuple[int, int, int]) -> "torch.nn.Module":
    """The fine-tuned model with plain fake-quantize ops (what OpenVINO and the ONNX exporter read)."""
    import torch

    nncf = _import_nncf()
    return nncf.strip(student, do_copy=True, strip_format=nncf.StripFormat.NATIVE,
                      example_input=torch.zeros(1, *chw)).eval()


def to_onnx(student: "torch.nn.Module", path, chw: tuple[int, int, int], output_names: Sequence[str]) -> None:
    """A Q/DQ ONNX graph (opset 17, dynamic batch) of a ModelOpt student, its constants stored as
    initializers (where TensorRT's and our Q/DQ checks read scales and zero-points)."""
    import onnx
    import torch

    from ..onnx_export import constants_to_initializers

    with torch.no_grad(), _no_warnings():
        torch.onnx.export(student, torch.zeros(1, *chw), str(path), input_names=["input"],
                          output_names=list(output_names), opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in output_names}})
    model = onnx.load(str(path))
    constants_to_initializers(model.graph)
    onnx.save(model, str(path))


def qdq_graph(ref, calib, steps: int, path, log: "BuildLog", *, recipe: str = "qad") -> dict[str, Any]:
    """The PyTorch recipes for Q/DQ graphs (TensorRT, ONNX Runtime): ModelOpt PTQ (BatchNorm
    folded; SE gates, depthwise convolutions and the global-pool input unquantized, see
    :func:`_modelopt_ptq`), then ``steps`` of distillation (0:
    the ``rexnet`` recipe, PTQ alone), exported to ``path``, pruned and held to TensorRT's Q/DQ
    rules. Returns the manifest record."""
    import onnx

    from ..onnx_export import prune_file

    result = quantize_and_distill(ref.module, calib.tensors(), QadConfig(steps=steps, lr=MODELOPT_LR, patience=0), log,
                                  quantizer="modelopt",
                                  recipe=recipe)
    to_onnx(result.model, path, tuple(ref.data_config.input_size), ref.output_names)
    prune_file(path)
    graph = onnx.load(str(path))
    require_trt_rules(graph, "the distilled Q/DQ graph")
    return {**result.record, "quantize_linear_nodes": quantize_linear_count(graph)}


def quiet_torch_notices() -> None:
    """Silence torch's notices about NNCF/torchao/ModelOpt internals (no CUDA runtime on a CPU
    host, Enum registration): they are not about the user's build."""
    for name in ("torch.utils.cpp_extension", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _import_modelopt():
    quiet_torch_notices()
    try:
        import warnings

        with warnings.catch_warnings():  # it cannot export Hugging Face modules without transformers: none here
            warnings.filterwarnings("ignore", message="Cannot find transformers")
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise UsageError(f"the qad recipe for Q/DQ graphs needs ModelOpt's PyTorch quantization ({exc.name} is "
                         "missing): pip install 'rexnet-deploy[trt]'") from None
    return mtq


def _import_nncf():
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_TIMEOUT_S)
    quiet_torch_notices()
    try:
        import nncf
        import nncf.torch  # noqa: F401  (the PyTorch backend)
        import torchao  # noqa: F401  (nncf.strip of a PyTorch model needs it)
    except ImportError as exc:
        raise UsageError(f"the qad recipe needs {exc.name}, which is not installed: "
                         "pip install 'rexnet-deploy[openvino]'") from None
    return nncf


@contextlib.contextmanager
def library_output(log: "BuildLog", verbose: bool = False, logger_name: str = "nncf") -> Iterator[None]:
    """NNCF draws its own progress bars and logs through the ``nncf`` logger (ModelOpt prints what it
    inserted): show that unless the log is quiet, and pause the log's spinner while they run."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    # accuracy control reports its drop and the layers it reverts at INFO: worth showing
    logger.setLevel(logging.ERROR if log.quiet else (logging.INFO if verbose else logging.WARNING))
    try:
        with log.paused(), (contextlib.redirect_stdout(io.StringIO()) if log.quiet else contextlib.nullcontext()):
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about our model, not the user's input
        yield
