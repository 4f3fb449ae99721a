"""The generic metrics: each passes equal samples and fails distorted ones."""

import numpy as np

from simgan.metrics.classifier import classifier_test
from simgan.metrics.distances import separation_power, wasserstein1_scaled
from simgan.metrics.fpd import fpd, kpd


def test_separation_power_equal_and_distorted():
    r = np.random.default_rng(0)
    a, b = r.normal(0, 1, 20000), r.normal(0, 1, 20000)
    assert separation_power(a, b) < 0.005
    assert separation_power(a, b + 3) > 0.6
    assert wasserstein1_scaled(a, b) < 0.05 and wasserstein1_scaled(a, b * 0.9 + 1) > 0.9


def test_fpd_kpd_equal_and_distorted():
    r = np.random.default_rng(1)
    a, b = r.normal(size=(3000, 5)), r.normal(size=(3000, 5))
    assert fpd(a, b) < 0.05 and fpd(a, b + 1) > 4
    assert abs(kpd(a, b)[0]) < 0.01 and kpd(a, b + 1)[0] > 0.1


def test_classifier_equal_and_distorted():
    r = np.random.default_rng(2)
    a, b = r.normal(size=(2000, 4)), r.normal(size=(2000, 4))
    same = classifier_test(a, b, seeds=2)
    assert 0.4 < same["auc"] < 0.6 and same["jsd"] < 0.1
    diff = classifier_test(a, b + 2, seeds=2)
    assert diff["auc"] > 0.95 and diff["jsd"] > 0.6


def test_no_verdict_without_evidence():
    """At 20-25 events per class the classifier cannot tell a shifted sample from an equal one
    (AUC 0.500 for both): a gate needs `min_events` behind the test, some check at all, and a
    stored verdict that follows from its own figures."""
    from simgan.metrics.gate import gate_from_values, gate_rows, inconsistency
    r = np.random.default_rng(0)
    a, b = r.normal(size=(22, 5)), r.normal(size=(22, 5)) + 1.0
    small = classifier_test(a, b, seeds=2)
    assert small["auc"] == 0.5 and small["n_per_class"] == 22  # why the minimum exists
    g = gate_from_values({"auc": (small["auc"], 0.9)}, small["n_per_class"], 100)
    assert not g["pass"] and g["checks"]["auc"]["pass"] and not g["checks"]["events_per_class"]["pass"]
    assert "| events_per_class | 22 | >= 100 | FAIL |" in gate_rows(g)
    assert gate_from_values({"auc": (0.6, 0.9)}, 500, 100)["pass"]
    assert not gate_from_values({"auc": (0.6, None)})["pass"]  # nothing checked: no verdict
    assert inconsistency(gate_from_values({"auc": (0.6, 0.9)}, 500, 100)) is None
    edited = gate_from_values({"auc": (0.97, 0.9)}, 500, 100)
    edited["pass"] = True
    assert "'pass' is True but its checks say False" in inconsistency(edited)
    edited["checks"]["auc"]["pass"] = True
    assert "check 'auc' says pass=True but its figures (0.97 against max 0.9)" in inconsistency(edited)
    assert inconsistency({"pass": True, "checks": {}}) == "it lists no checks"


def test_the_registered_models_sampling_refuses_what_it_cannot_deliver(monkeypatch):
    """sample_rows (every domain's pyfunc): chunks give the rows of one call in order; an
    output larger than the memory is refused before it is allocated, naming a batch that fits;
    a non-finite sample is an error, not an HTTP 200 with 'Infinity' in it."""
    import pytest
    import torch

    from simgan.domains import base

    class Rows:  # a model whose sample is its condition row, times 2
        def sample(self, c, x, g, precision="fp32"):
            return c * 2

    c = torch.arange(10, dtype=torch.float32).reshape(10, 1).repeat(1, 3)
    np.testing.assert_array_equal(base.sample_rows(Rows(), c, None, 0, "fp32", chunk=3), c.numpy() * 2)
    monkeypatch.setattr(base, "available_memory", lambda: 100)  # bytes: 10 rows of 12 B do not fit in 80
    with pytest.raises(ValueError, match="10 rows give 0.0 GiB of output, more than .*at most 6 rows at a time"):
        base.sample_rows(Rows(), c, None, 0, "fp32")
    monkeypatch.undo()
    c[4, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite values for 1 of 10 rows \\(first: row 4\\)"):
        base.sample_rows(Rows(), c, None, 0, "fp32", chunk=3)
