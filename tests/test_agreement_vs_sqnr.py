"""benchmarks/agreement_vs_sqnr.py: the scaled-error curve (numpy; no engine built)."""

from __future__ import annotations

import numpy as np

from benchmarks.agreement_vs_sqnr import scaled_agreement, sqnr_for
from rexnet_deploy.harness.metrics import Comparison


def _logits(seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(300, 50))
    ref[np.arange(300), rng.integers(0, 50, 300)] += rng.uniform(0, 3, 300)  # some decisive, some near ties
    return ref, (ref + noise * rng.normal(size=ref.shape)).astype(np.float32)


def test_gain_zero_is_the_measured_engine_and_more_sqnr_agrees_more():
    ref, out = _logits(0, 0.3)
    rows = scaled_agreement(ref, out, [-3.0, 0.0, 6.0, 40.0])
    c = Comparison(["logits"], True)
    c.update([ref], [out])
    measured = c.metrics()
    assert rows[1]["top1"] == measured["top1_agreement"] and abs(rows[1]["sqnr_db"] - measured["sqnr_db"]) < 1e-3
    assert [round(r["sqnr_db"] - rows[1]["sqnr_db"], 1) for r in rows] == [-3.0, 0.0, 6.0, 40.0]
    assert rows[0]["top1"] < rows[1]["top1"] < rows[2]["top1"] < rows[3]["top1"] <= 1.0


def test_sqnr_for_a_target_is_the_first_gain_whose_mean_reaches_it():
    curves = [scaled_agreement(*_logits(seed, 0.3), [0.0, 3.0, 6.0, 40.0]) for seed in (1, 2)]
    top1 = [np.mean([c[i]["top1"] for c in curves]) for i in range(4)]
    target = (top1[1] + top1[2]) / 2  # between the second and third gains
    assert sqnr_for(curves, target) == np.mean([c[2]["sqnr_db"] for c in curves])
    assert sqnr_for(curves, 1.01) is None
