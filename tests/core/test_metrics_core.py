"""The generic metrics: each passes equal samples and fails distorted ones."""

import json

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
    # a budget, not the free memory: 10 rows of 12 B within 1e-7 GiB (107 B) go 8 at a time
    monkeypatch.setenv("SIMGAN_MAX_OUTPUT_GIB", "1e-7")
    with pytest.raises(ValueError, match="more than one call's budget .*SIMGAN_MAX_OUTPUT_GIB.*at most 8 rows"):
        base.sample_rows(Rows(), c, None, 0, "fp32")
    monkeypatch.setenv("SIMGAN_MAX_OUTPUT_GIB", "lots")
    with pytest.raises(ValueError, match="SIMGAN_MAX_OUTPUT_GIB='lots': expected a number of GiB"):
        base.sample_rows(Rows(), c, None, 0, "fp32")
    monkeypatch.undo()
    c[4, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite values for 1 of 10 rows \\(first: row 4\\)"):
        base.sample_rows(Rows(), c, None, 0, "fp32", chunk=3)


def test_a_check_whose_floor_is_not_inside_its_limit_is_uninformative():
    """An AUC is judged from 0.5, other figures from 0: a floor within 80% of the way to the
    limit is informative; one past it makes the gate fail as uninformative, naming the size
    that would bring it there (the floor shrinking as 1/sqrt(N))."""
    from simgan.metrics.gate import floor_verdict, gate_from_values, uninformative_message

    assert floor_verdict(0.55, 0.75, 0.5, 480)["informative"]  # 0.05 of 0.25
    v = floor_verdict(0.338, 0.30, 0.0, 2400)
    assert not v["informative"] and v["events_needed"] == 4761  # ceil(2400 * (0.338 / 0.24)^2)
    g = gate_from_values({"auc": (0.6, 0.9, "auc_max", 0.52), "slope": (0.2, 0.30, "slope_max", 0.338)},
                         500, 100, 2400)
    assert not g["pass"] and set(g["uninformative"]) == {"slope"} and g["checks"]["slope"]["pass"]
    msg = uninformative_message(g)
    assert "validate.gate.slope_max = 0.3: the simulator against itself gives slope = 0.338" in msg
    assert "about 4761 events per sample" in msg
    assert gate_from_values({"auc": (0.6, 0.9, "auc_max", 0.52)}, 500, 100, 480)["pass"]
    assert not gate_from_values({"w": (0.1, 0.2, "w_max", float("nan"))})["pass"]  # no floor at this size


def test_draws_combine_into_the_worst_and_the_median():
    """Three draws: the check's value is its worst draw, the figure its median; one failing
    draw fails the verdict; a file edited to hide it does not follow from its checks."""
    from simgan.metrics.draws import combine_draws
    from simgan.metrics.gate import gate_from_values, inconsistency

    per = []
    for w1 in (0.10, 0.30, 0.12):
        m = {"w1_mean": w1, "auc": 0.55, "n_candidate": 400}
        m["gate"] = gate_from_values({"w1_mean": (w1, 0.25, "w1_mean_max"), "auc": (0.55, 0.75, "auc_max")}, 400, 100)
        per.append(m)
    c = combine_draws(per, [3, 4, 5], ["a.h5", "b.h5", "c.h5"])
    w = c["gate"]["checks"]["w1_mean"]
    assert w["values"] == [0.10, 0.30, 0.12] and w["value"] == 0.30 and not w["pass"] and not c["gate"]["pass"]
    assert c["w1_mean"] == 0.12 and c["draws"]["pass"] == [True, False, True] and c["draws"]["seeds"] == [3, 4, 5]
    assert c["draws"]["figures"]["w1_mean"] == {"median": 0.12, "min": 0.10, "max": 0.30, "values": [0.10, 0.30, 0.12]}
    assert inconsistency(c["gate"], c) is None
    hidden = json.loads(json.dumps(c))  # the failing draw's value replaced by the median, the verdict flipped
    hidden["gate"]["checks"]["w1_mean"].update(value=0.12, **{"pass": True})
    hidden["gate"]["pass"] = True
    assert "gives 0.12, not the worst of its draws" in inconsistency(hidden["gate"], hidden)
    ok = combine_draws(per[:1] + per[2:], [3, 5], ["a.h5", "c.h5"])
    assert ok["gate"]["pass"] and ok["gate"]["checks"]["w1_mean"]["value"] == 0.12
