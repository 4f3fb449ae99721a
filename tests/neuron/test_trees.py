"""Neuron morphologies kept as trees: the simulate stage's /trees table, its checks, and the
files MorphIO and NeuroM open (a container HDF5, SWC), against NeuroTS's own neurons."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from simgan.domains.neuron import io as nio
from simgan.domains.neuron import trees as nt
from simgan.domains.neuron.simulator import Projection, grow, grown_tree, image_and_truth
from simgan.errors import SimganError
from tests.conftest import REPO

NEURON = REPO / "configs/experiment/neuron_quickstart.yaml"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from pipeline.cli import main
    out = tmp_path_factory.mktemp("trees") / "sim.h5"
    assert main(["simulate", "-c", str(NEURON), "-q", "--out", str(out), "simulate.events=6",
                 "simulate.workers=1"]) == 0
    return out


def test_the_simulate_stage_keeps_every_tree_and_its_image_is_their_projection(simulated):
    ni = nio.read(simulated)
    assert ni.trees is not None and len(ni.trees) == len(ni) == 6
    for i, tree in enumerate(ni.trees):
        nt.check_tree(tree, "stored")
        img, truth = image_and_truth(tree, Projection())
        # stored points are rounded to 1/256 um: the re-projected image and the truth agree closely
        assert truth["total_length"] == pytest.approx(ni.truth["total_length"][i], rel=1e-4)
        assert truth["n_tips"] == ni.truth["n_tips"][i] and truth["n_bifurcations"] == ni.truth["n_bifurcations"][i]
        assert np.abs(img - ni.images[i]).sum() < 1e-3 * ni.images[i].sum()
    # the same neuron as NeuroTS grows it again, point for point within the rounding
    first = grown_tree(nio.CLASSES[ni.cell_class[0]], float(ni.randomness[0]), int(ni.seed[0]))
    assert np.abs(ni.trees[0].points - first.points).max() <= nt.QUANTUM_UM / 2 + 1e-6
    assert np.array_equal(ni.trees[0].parents, first.parents) and np.array_equal(ni.trees[0].types, first.types)
    # a subset and the first rows of the file keep their own trees
    sub = ni.subset(np.array([4, 1]))
    assert np.array_equal(sub.trees[0].points, ni.trees[4].points)
    head = nio.read(simulated, max_events=2)
    assert len(head.trees) == 2 and np.array_equal(head.trees[1].points, ni.trees[1].points)


def test_morphio_and_neurom_open_the_trees_as_neurons(simulated, tmp_path):
    morphio = pytest.importorskip("morphio")
    neurom = pytest.importorskip("neurom")
    from neurom.check import morphology_checks as mc

    ni = nio.read(simulated)
    names = [f"neuron_{i}" for i in range(len(ni))]
    nt.write_container(tmp_path / "trees.h5", ni.trees, names)
    col = morphio.Collection(str(tmp_path / "trees.h5"))
    for i, name in enumerate(names):
        m = neurom.load_morphology(col.load(name))
        # NeuroM's total length leaves out the soma connectors (0.5-1% of a NeuroTS neuron)
        assert neurom.features.get("total_length", m) == pytest.approx(ni.truth["total_length"][i], rel=0.02)
        assert neurom.features.get("number_of_leaves", m) == ni.truth["n_tips"][i]
        for check in (mc.has_no_jumps, mc.has_all_nonzero_section_lengths, mc.has_no_dangling_branch,
                      mc.has_unifurcation):
            assert check(m).status, (name, check.__name__)
        # SWC: the same neuron, the same sections
        nt.write_swc(tmp_path / f"{name}.swc", ni.trees[i])
        back = nt.from_morphio(morphio.Morphology(str(tmp_path / f"{name}.swc")))
        assert back.n_sections == ni.trees[i].n_sections
        assert np.abs(back.points - ni.trees[i].points).max() < 1e-3
        assert np.array_equal(nt.to_morphio(ni.trees[i]).section_types, col.load(name).section_types)


def test_a_converted_swc_folder_keeps_its_trees(tmp_path):
    morph = grow("PC", 0.3, 11)
    morph.write(str(tmp_path / "cell.swc"))
    (tmp_path / "labels.csv").write_text("file,cell_class,randomness\ncell.swc,PC,0.3\n")
    ni = nio.read_swc_dir(tmp_path, tmp_path / "labels.csv")
    nio.write(tmp_path / "cells.h5", ni)
    back = nio.read(tmp_path / "cells.h5")
    grown = grown_tree("PC", 0.3, 11)
    assert back.trees[0].n_sections == grown.n_sections
    assert neurite_length(back.trees[0]) == pytest.approx(neurite_length(grown), rel=5e-3)


def neurite_length(t: nt.Tree) -> float:
    a, b = t.segments()
    return float(np.linalg.norm(b - a, axis=1).sum())


def test_image_only_files_stay_valid_and_a_broken_trees_table_is_named(simulated, tmp_path):
    ni = nio.read(simulated)
    plain = nio.NeuronImages(ni.images, ni.cell_class, ni.randomness)
    assert nio.read(nio.write(tmp_path / "plain.h5", plain)).trees is None
    broken = tmp_path / "broken.h5"
    broken.write_bytes(simulated.read_bytes())
    with h5py.File(broken, "a") as f:
        f["trees/structure"][5, 2] = 10_000
    with pytest.raises(SimganError, match=r"broken.h5: dataset 'trees/structure' row 5 \(neuron 0\)"):
        nio.read(broken)
    with h5py.File(broken, "a") as f:
        del f["trees/soma"]
    with pytest.raises(SimganError, match=r"group 'trees' lacks \['soma'\]"):
        nio.read(broken)
