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
