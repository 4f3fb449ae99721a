"""The trees' validation figures (NeuroM morphometrics, KS, TMD, validity, the morphometric
classifier): NeuroTS against NeuroTS passes, and a distorted sample fails each of them."""

from __future__ import annotations

import numpy as np
import pytest

from simgan.domains.neuron import morphometrics as mm
from simgan.domains.neuron import trees as nt
from simgan.domains.neuron.simulator import CLASSES, simulate


@pytest.fixture(scope="module")
def samples():
    """Three independent NeuroTS samples of 16 interneurons (reference, floor, candidate), from
    one run."""
    ev = simulate(48, 1, ("IN",), (0.1, 0.4), workers=2)
    return [(ev["trees"].subset(slice(k, k + 16)), ev["conditions"]["cell_class"][k:k + 16]) for k in (0, 16, 32)]


def scaled(trees: nt.Trees, factor: float) -> nt.Trees:
    """Every neuron stretched by `factor` about its soma (longer sections, wider reach)."""
    return nt.Trees(trees.points * factor, trees.diameters, trees.structure, trees.soma * factor,
                    trees.neuron_points, trees.neuron_sections, trees.neuron_soma)


def test_neurots_against_neurots_passes_and_a_stretched_sample_fails(samples):
    (ref, rc), (floor, fc), (cand, cc) = samples
    r, f = mm.sample(ref, rc), mm.sample(floor, fc)
    same = mm.compare(r, mm.sample(cand, cc), f, seeds=2)
    assert same["validity"] == 1.0 and same["validity_floor"] == 1.0
    assert set(same["ks"]) == {"IN"} and len(same["ks"]["IN"]) >= 12  # at least 12 NeuroM features per class
    assert same["ks_max"] < same["ks_floor_max"] + 0.15
    assert same["auc_morphometrics"] < 0.75
    tmd = same["tmd"]["IN@basal_dendrite"]
    assert tmd["distance"] <= 2 * tmd["floor_p95"]
    stretched = mm.sample(scaled(cand, 1.5), cc)
    bad = mm.compare(r, stretched, f, seeds=2)
    ks = bad["ks"]["IN"]
    ks_same = same["ks"]["IN"]
    for k in ("section_lengths", "section_radial_distances", "total_length"):  # 1.5 x longer
        assert ks[f"{k}@basal_dendrite"] > ks_same[f"{k}@basal_dendrite"] + 0.1, k
    assert ks["section_branch_orders@basal_dendrite"] < 0.2  # the topology is untouched
    assert same["auc_morphometrics"] == bad["auc_morphometrics"] == 0.5  # 16 neurons: the classifier can say nothing
    # the morphometric classifier where it can judge: 96 neurons a side (each neuron six times)
    from simgan.metrics.classifier import classifier_test
    rows = {"ref": r.rows, "bad": stretched.rows}
    keys = sorted({k for x in rows["ref"] for k in x} - {"sholl_profile"})
    x = {k: np.repeat(mm.summaries(v, rc, keys), 6, axis=0) for k, v in rows.items()}
    assert classifier_test(x["ref"], x["bad"], seeds=1)["auc"] > 0.9
    assert bad["tmd"]["IN@basal_dendrite"]["distance"] > bad["tmd"]["IN@basal_dendrite"]["floor_p95"]


def test_an_invalid_neuron_is_counted_not_fatal(samples):
    (ref, rc), _, _ = samples
    t = ref[0]
    # a zero-length section: its points all in one place
    pts = t.points.copy()
    pts[t.offsets[3]:t.offsets[4]] = pts[t.offsets[3]]
    broken = nt.Trees.of([nt.Tree(pts, t.diameters, t.offsets, t.types, t.parents, t.soma), *list(ref)[1:4]])
    _, _, valid = mm.load(broken)
    assert valid.tolist() == [False, True, True, True]
    assert CLASSES[int(rc[0])] == "IN"


def test_sholl_profiles_count_as_neurom_does(samples):
    neurom = pytest.importorskip("neurom")
    (ref, _), _, _ = samples
    few = ref.subset(slice(0, 4))
    ours = mm.sholl_profiles(few)
    _, morphs, _ = mm.load(few)
    radii = mm.SHOLL_STEP_UM * (1 + np.arange(mm.SHOLL_RADII))
    for m, row in zip(morphs, ours):
        np.testing.assert_array_equal(row, neurom.features.get("sholl_crossings", m, center=np.zeros(3), radii=radii))
