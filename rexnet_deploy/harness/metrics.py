"""Engine-vs-reference metrics, accumulated batch by batch (feature maps of many images would not
fit in memory at once). Pure numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two (N, ...) arrays, in float64."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.all(a == b, axis=1), 1.0, 0.0))
    return cos


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10·log10(Σref² / Σ(ref−eng)²); +inf for identical outputs (written as null in JSON)."""
    if noise_power == 0:
        return math.inf
    if signal_power == 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass
class _OutputStats:
    cosines: list[np.ndarray] = field(default_factory=list)
    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0

    def update(self, ref: np.ndarray, eng: np.ndarray) -> None:
        if ref.shape != eng.shape:
            raise ValueError(f"engine output shape {eng.shape} differs from the reference's {ref.shape}")
        ref64, eng64 = ref.astype(np.float64), eng.astype(np.float64)
        self.cosines.append(cosine_rows(ref64, eng64))
        self.signal += float((ref64 ** 2).sum())
        self.noise += float(((ref64 - eng64) ** 2).sum())
        if not np.isfinite(eng64).all():
            self.max_abs = math.inf
        else:
            self.max_abs = max(self.max_abs, float(np.abs(ref64 - eng64).max(initial=0.0)))

    def result(self) -> dict[str, float]:
        cos = np.concatenate(self.cosines) if self.cosines else np.zeros(0)
        cos = np.nan_to_num(cos, nan=0.0)
        return {
            "cosine_mean": float(cos.mean()) if cos.size else math.nan,
            "cosine_min": float(cos.min()) if cos.size else math.nan,
            "sqnr_db": sqnr_db(self.signal, self.noise),
            "max_abs_err": self.max_abs,
        }


DECISIVE_MARGIN = 0.1  # reference top-1 minus top-2 logit
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``hits / n`` (95% by default).

    Agreement on a few hundred photos moves by points between calibration samples and runs, so a
    proportion is reported with its interval. Wilson's rather than the normal approximation's: it
    stays inside [0, 1] and is not zero-width at 0 or 1 (200 of 200 agreeing reads 0.981–1.000)."""
    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n > 0, got {hits} of {n}")
    p, z2 = hits / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact ends at 0 and n (the closed form gives them up to rounding)
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


def _ci95(hits: int, n: int) -> list[float] | None:
    """[lo, hi] for the report (a list: what JSON reads back), None where there is no proportion."""
    return list(wilson_interval(hits, n)) if n else None



class Comparison:
    """Accumulates engine-vs-reference agreement (and labelled accuracy) over batches.

    top-5 agreement: the reference's top-1 class is among the engine's top 5.
    decisive agreement: top-1 agreement on the images whose reference top-1/top-2 logit margin
    exceeds DECISIVE_MARGIN (on unseen classes near-ties dominate the disagreement; these are
    the images where a flip is a real error). top-2 containment: the reference's top-1 is
    among the engine's top 2.
    """

    def __init__(self, output_names: Sequence[str], classify: bool):
        self.output_names = list(output_names)
        self.classify = classify
        self.stats = {name: _OutputStats() for name in self.output_names}
        self.n = 0
        self.top1_hits = 0
        self.top2_hits = 0
        self.top5_hits = 0
        self.decisive_n = 0
        self.decisive_hits = 0
        self.labelled = {"n": 0, "engine_top1": 0, "engine_top5": 0, "reference_top1": 0, "reference_top5": 0}

    def update(self, ref: Sequence[np.ndarray], eng: Sequence[np.ndarray], labels: np.ndarray | None = None) -> None:
        if len(ref) != len(eng):
            raise ValueError(f"engine gave {len(eng)} outputs, the reference {len(ref)}")
        for name, r, e in zip(self.output_names, ref, eng):
            self.stats[name].update(r, e)
        self.n += len(ref[0])
        if self.classify:
            r, e = ref[0], eng[0]
            ref_top1 = r.argmax(axis=1)
            eng_top5 = _topk(e, 5)
            hit = eng_top5[:, 0] == ref_top1
            self.top1_hits += int(hit.sum())
            self.top2_hits += int((eng_top5[:, :2] == ref_top1[:, None]).any(axis=1).sum())
            top2 = np.sort(np.partition(r, -2, axis=1)[:, -2:], axis=1) if r.shape[1] > 1 else None
            decisive = (top2[:, 1] - top2[:, 0] > DECISIVE_MARGIN) if top2 is not None else np.ones(len(r), bool)
            self.decisive_n += int(decisive.sum())
            self.decisive_hits += int(hit[decisive].sum())
            self.top5_hits += int((eng_top5 == ref_top1[:, None]).any(axis=1).sum())
            if labels is not None:
                known = labels >= 0
                if known.any():
                    lab = labels[known]
                    ref_top5 = _topk(r[known], 5)
                    self.labelled["n"] += int(known.sum())
                    self.labelled["engine_top1"] += int((eng_top5[known][:, 0] == lab).sum())
                    self.labelled["engine_top5"] += int((eng_top5[known] == lab[:, None]).any(axis=1).sum())
                    self.labelled["reference_top1"] += int((ref_top5[:, 0] == lab).sum())
                    self.labelled["reference_top5"] += int((ref_top5 == lab[:, None]).any(axis=1).sum())

    def metrics(self) -> dict[str, Any]:
        per_output = {name: s.result() for name, s in self.stats.items()}
        worst = {
            "cosine_mean": min(v["cosine_mean"] for v in per_output.values()),
            "cosine_min": min(v["cosine_min"] for v in per_output.values()),
            "sqnr_db": min(v["sqnr_db"] for v in per_output.values()),
            "max_abs_err": max(v["max_abs_err"] for v in per_output.values()),
        }
        metrics: dict[str, Any] = {
            "top1_agreement": self.top1_hits / self.n if self.classify and self.n else None,
            "top5_agreement": self.top5_hits / self.n if self.classify and self.n else None,
            "top2_containment": self.top2_hits / self.n if self.classify and self.n else None,
            "top1_agreement_decisive": self.decisive_hits / self.decisive_n if self.classify and self.decisive_n else None,
            "decisive_images": self.decisive_n if self.classify else None,
            **worst,
        }
        if self.classify:  # each proportion's 95% interval for its photo count (n_images; decisive_images)
            metrics.update({
                "top1_agreement_ci95": _ci95(self.top1_hits, self.n),
                "top5_agreement_ci95": _ci95(self.top5_hits, self.n),
                "top2_containment_ci95": _ci95(self.top2_hits, self.n),
                "top1_agreement_decisive_ci95": _ci95(self.decisive_hits, self.decisive_n),
            })
        if len(per_output) > 1:
            metrics["per_output"] = per_output
        return metrics

    def labelled_accuracy(self) -> dict[str, Any] | None:
        n = self.labelled["n"]
        if not n:
            return None
        return {"n": n, **{k: v / n for k, v in self.labelled.items() if k != "n"}}


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# Gate thresholds by precision: FP32 near-exact, reduced precisions looser. Overridable per run.
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {"top1_agreement": 0.99, "cosine_min": 0.9999, "sqnr_db": 40.0},
    "fp16": {"top1_agreement": 0.97, "cosine_min": 0.999, "sqnr_db": 25.0},
    "bf16": {"top1_agreement": 0.95, "cosine_min": 0.995, "sqnr_db": 18.0},
    "int8": {"top1_agreement": 0.90, "cosine_min": 0.95, "sqnr_db": 12.0},
}
GATE_KEYS = ("top1_agreement", "top5_agreement", "cosine_mean", "cosine_min", "sqnr_db", "max_abs_err")


def gate_thresholds(precision: str, overrides: dict[str, float] | None = None) -> dict[str, float]:
    thresholds = dict(DEFAULT_GATES.get(precision, DEFAULT_GATES["int8"]))
    thresholds.update(overrides or {})
    return thresholds


def evaluate_gate(metrics: dict[str, Any], thresholds: dict[str, float]) -> dict[str, Any]:
    """Every threshold is a lower bound, except ``max_abs_err`` (an upper bound).
    A metric that does not apply to the head (top-1 of an embedding) is skipped."""
    failures = []
    for key, bound in thresholds.items():
        value = metrics.get(key)
        if value is None:  # not applicable to this head, or infinite SQNR read back from JSON
            continue
        ok = value <= bound if key == "max_abs_err" else value >= bound  # NaN fails both
        if not ok:
            op = "<=" if key == "max_abs_err" else ">="
            ci = metrics.get(f"{key}_ci95")  # an agreement's interval: the gate still reads the value alone
            where = f"95% CI {ci[0]:.3f}–{ci[1]:.3f}; " if ci else ""
            failures.append(f"{key} {value:.6g} ({where}needs {op} {bound:g})")
    return {"passed": not failures, "thresholds": thresholds, "failures": failures}
