import os

import h5py
import numpy as np
import pytest

from pipeline.cli import main
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.data.binning import load_binning, reference_binning
from simgan.domains.calorimeter.data.calogan import read_calogan
from simgan.domains.calorimeter.data.convert import read_any
from simgan.domains.calorimeter.data.rootio import read_root, write_root
from simgan.domains.calorimeter.data.stream import ChunkedShowerDataset
from simgan.errors import SimganError


@pytest.mark.parametrize("name, n", [("ds1-photons", 368), ("ds1-pions", 533), ("ds2", 6480), ("ds3", 40500),
                                     ("reference", 6480)])
def test_public_layouts(name, n):
    assert load_binning(name).n_voxels == n


def _tiny(n=20, seed=0):
    r = np.random.default_rng(seed)
    b = reference_binning()
    s = r.exponential(1.0, (n, b.n_voxels)).astype(np.float32) * (r.random((n, b.n_voxels)) < 0.1)
    return cc.ShowerData(r.uniform(1e3, 1e4, n), s, b)


def test_roundtrip_hdf5_and_root_exact(tmp_path):
    d = _tiny()
    cc.write(tmp_path / "a.h5", d)
    back = cc.read(tmp_path / "a.h5")
    np.testing.assert_array_equal(back.showers, d.showers)
    np.testing.assert_array_equal(back.energies, d.energies)
    write_root(tmp_path / "a.root", back)
    r = read_root(tmp_path / "a.root", back.binning, chunk_size=7)
    np.testing.assert_array_equal(r.showers, d.showers)
    np.testing.assert_array_equal(r.energies, d.energies)
    assert main(["convert", str(tmp_path / "a.root"), "--out", str(tmp_path / "b.h5"), "--binning", "reference"]) == 0
    np.testing.assert_array_equal(cc.read(tmp_path / "b.h5").showers, d.showers)


def test_public_style_file_without_xml_takes_the_layout_of_its_voxel_count(tmp_path):
    d = _tiny(5)
    p = tmp_path / "pub.h5"
    with h5py.File(p, "w") as f:
        f["incident_energies"] = d.energies.reshape(-1, 1)
        f["showers"] = d.showers
    assert cc.read(p).binning.digest() == load_binning("ds2").digest()
    assert cc.read(p, "ds2").showers.shape == (5, 6480)
    odd = tmp_path / "odd.h5"
    with h5py.File(odd, "w") as f:
        f["incident_energies"] = d.energies.reshape(-1, 1)
        f["showers"] = d.showers[:, :100]
    with pytest.raises(SimganError, match="carries no binning XML and 100 voxels per shower match no shipped"):
        cc.read(odd)


def _write_raw(p, energies, showers):
    with h5py.File(p, "w") as f:
        f["incident_energies"] = energies
        f["showers"] = showers


@pytest.mark.parametrize("case, match", [
    ("wrong_voxels", "has 100 voxels per shower but the binning"),
    ("nan_energy", "row 2: not finite"),
    ("neg_energy", "row 1: incident energy must be > 0"),
    ("zero_energy", "row 0: incident energy must be > 0"),
    ("neg_shower", "row 3: negative energy deposit"),
    ("nan_shower", "row 4: contains NaN"),
    ("int_dtype", "expected floating point"),
    ("two_energies", "expected \\(N, 1\\)"),
    ("gev_units", "looks like GeV"),
    ("gev_units_above_256", "holds a median 1[0-9]{3}x the incident energy"),
    ("all_in_gev", "largest incident energy is 60.4, which looks like GeV"),
    ("deposits_in_gev", "holds a median 0.00099 of the incident energy: the deposits look like GeV"),
])
def test_bad_files_name_file_dataset_row(tmp_path, case, match):
    e = np.full((6, 1), 5000.0)
    s = np.zeros((6, 6480), np.float32)
    if case == "wrong_voxels":
        s = np.zeros((6, 100), np.float32)
    elif case == "nan_energy":
        e[2] = np.nan
    elif case == "neg_energy":
        e[1] = -1
    elif case == "zero_energy":
        e[0] = 0
    elif case == "neg_shower":
        s[3, 10] = -1
    elif case == "nan_shower":
        s[4, 0] = np.nan
    elif case == "int_dtype":
        s = np.zeros((6, 6480), np.int32)
    elif case == "two_energies":
        e = np.full((6, 2), 5000.0)
    elif case == "gev_units":
        e = np.full((6, 1), 5.0)
    elif case == "gev_units_above_256":  # 300.4 GeV written as 300.4 with showers in MeV
        e = np.full((6, 1), 300.4)
        s[:, :10] = 3.004e5 / 10
    elif case == "all_in_gev":  # a 1-60 GeV file with energies and deposits in GeV
        e = np.full((6, 1), 60.4)
        s[:, :10] = 60.4 * 0.98 / 10
    elif case == "deposits_in_gev":
        s[:, :10] = 5.0 * 0.99 / 10
    p = tmp_path / f"{case}.h5"
    _write_raw(p, e, s)
    with pytest.raises(SimganError, match=match) as exc:
        cc.read(p, "reference")
    assert str(p) in str(exc.value)


def test_truncated_and_missing(tmp_path, capsys):
    d = _tiny()
    cc.write(tmp_path / "a.h5", d)
    raw = (tmp_path / "a.h5").read_bytes()
    (tmp_path / "t.h5").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(SimganError, match="truncated or corrupt"):
        cc.read(tmp_path / "t.h5")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["showers"] = d.showers
    with pytest.raises(SimganError, match="missing dataset 'incident_energies'"):
        cc.read(tmp_path / "m.h5", "reference")
    out = tmp_path / "out.root"
    assert main(["convert", str(tmp_path / "t.h5"), "--out", str(out)]) == 2
    assert "t.h5" in capsys.readouterr().err and not out.exists()


def test_missing_root_branch(tmp_path):
    write_root(tmp_path / "a.root", _tiny(4), shower_branch="cells")
    with pytest.raises(SimganError, match="no branch 'showers'"):
        read_root(tmp_path / "a.root", reference_binning())


def test_unwritable_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")  # a file where the output folder should be: not creatable, even as root
    with pytest.raises(SimganError, match="cannot create output folder"):
        cc.write(blocker / "sub" / "x.h5", _tiny(2))
    cc.write(tmp_path / "in.h5", _tiny(2))
    assert main(["convert", str(tmp_path / "in.h5"), "--out", str(blocker / "o.root")]) == 2
    assert "o.root" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "plain-file"]


def test_failed_write_leaves_no_partial_file(tmp_path):
    d = _tiny(4)
    d.showers = d.showers[:, :10]  # inconsistent with the binning
    with pytest.raises(SimganError):
        cc.write(tmp_path / "x.h5", d)
    assert list(tmp_path.iterdir()) == []


def test_calogan_reader(tmp_path):
    r = np.random.default_rng(1)
    p = tmp_path / "calogan.h5"
    with h5py.File(p, "w") as f:
        f["layer_0"] = r.random((4, 3, 96)).astype(np.float32)
        f["layer_1"] = r.random((4, 12, 12)).astype(np.float32)
        f["layer_2"] = r.random((4, 12, 6)).astype(np.float32)
        f["overflow"] = r.random((4, 3)).astype(np.float32)
        f["energy"] = np.array([[10.0], [20.0], [30.0], [40.0]])
    d = read_calogan(p)
    assert d.showers.shape == (4, 504) and d.energies[0] == 10000.0
    with h5py.File(p, "r") as f:
        assert np.isclose(d.showers[:, :288].sum(), f["layer_0"][:].sum(), rtol=1e-5)
    cc.write(tmp_path / "c.h5", d)
    assert cc.read(tmp_path / "c.h5").binning.n_voxels == 504
    # prepare takes the layout from domain.geometry: another than CaloGAN's is named, 'calogan' reads
    with pytest.raises(SimganError, match="holds the CaloGAN layout .* but domain.geometry is 'reference' .*"
                                          "set domain.geometry=calogan"):
        read_any(p, "calogan", "reference")
    assert read_any(p, "auto", "calogan").binning.digest() == load_binning("calogan").digest() == d.binning.digest()
    with h5py.File(p, "a") as f:  # a CaloGAN file missing a layer is named as such, not as a CaloChallenge file
        del f["layer_2"]
    with pytest.raises(SimganError, match="missing dataset 'layer_2' for CaloGAN format"):
        read_any(p)


def test_units_of_root_calogan_and_generation_energies(tmp_path):
    """The unit checks of every reader: ROOT in GeV, CaloGAN already in MeV, and the energies
    that `generate --energies-from` takes (GeV, NaN, zero) are refused by name."""
    from simgan.domains.calorimeter.data.binning import reference_binning
    from simgan.domains.calorimeter.data.rootio import read_root, write_root
    from simgan.domains.calorimeter.generate import energies_from_file
    s = np.zeros((6, 6480), np.float32)
    s[:, :10] = 30040.0  # 300.4 GeV deposited
    gev = cc.ShowerData(np.full(6, 300.4), s, reference_binning())  # energies written in GeV, above 256
    write_root(tmp_path / "gev.root", gev)
    with pytest.raises(SimganError, match=r"gev.root:showers: dataset 'showers' holds a median 1000x"):
        read_root(tmp_path / "gev.root", reference_binning())
    with pytest.raises(SimganError, match="holds a median 1000x"):
        energies_from_file(_raw(tmp_path / "g.h5", np.full((6, 1), 300.4), s))
    s60 = np.zeros((6, 6480), np.float32)
    s60[:, :10] = 5.9  # a 1-60 GeV file with energies and deposits in GeV
    write_root(tmp_path / "gev60.root", cc.ShowerData(np.full(6, 60.4), s60, reference_binning()))
    with pytest.raises(SimganError, match=r"gev60.root:showers: dataset 'incident_energies': largest incident "
                                          r"energy is 60.4, which looks like GeV"):
        read_root(tmp_path / "gev60.root", reference_binning())
    with pytest.raises(SimganError, match="largest incident energy is 60.4, which looks like GeV"):
        energies_from_file(_raw(tmp_path / "g60.h5", np.full((6, 1), 60.4), s60))
    s = s / 5  # 60.4 GeV deposited
    for bad, match in ((np.nan, "row 2: not finite"), (0.0, "row 2: incident energy must be > 0")):
        e = np.full((6, 1), 6.04e4)
        e[2] = bad
        with pytest.raises(SimganError, match=match):
            energies_from_file(_raw(tmp_path / "b.h5", e, s))
    assert energies_from_file(_raw(tmp_path / "ok.h5", np.full((6, 1), 6.04e4), s))[0].tolist() == [6.04e4] * 6
    p = tmp_path / "calogan_mev.h5"
    with h5py.File(p, "w") as f:
        for key, shape in (("layer_0", (3, 96)), ("layer_1", (12, 12)), ("layer_2", (12, 6))):
            f[key] = np.ones((2, *shape), np.float32)
        f["energy"] = np.array([[10000.0], [50000.0]])  # MeV where CaloGAN stores GeV
    with pytest.raises(SimganError, match="largest value 50000 looks like MeV"):
        read_calogan(p)


def _raw(p, energies, showers):
    from simgan.domains.calorimeter.data.binning import reference_binning
    with h5py.File(p, "w") as f:
        f["incident_energies"] = energies
        f["showers"] = showers
        f.attrs[cc.XML_ATTR] = reference_binning().to_xml()
    return p


def test_streaming_dataset_visits_every_row_once(tmp_path):
    d = _tiny(50)
    cc.write(tmp_path / "a.h5", d)
    ds = ChunkedShowerDataset(tmp_path / "a.h5", chunk_size=8, seed=3)
    seen = sorted(float(e) for _, e, _ in ds)
    np.testing.assert_allclose(seen, np.sort(d.energies))
    r0 = [float(e) for _, e, _ in ChunkedShowerDataset(tmp_path / "a.h5", 8, rank=0, world_size=2)]
    r1 = [float(e) for _, e, _ in ChunkedShowerDataset(tmp_path / "a.h5", 8, rank=1, world_size=2)]
    assert len(r0) + len(r1) == 50 and not set(r0) & set(r1)
    # batch mode: the same rows in the same order, cut into batches
    batches = list(ChunkedShowerDataset(tmp_path / "a.h5", chunk_size=8, seed=3, batch_size=3))
    assert all(len(e) <= 3 and x.shape == (len(e), d.showers.shape[1]) for x, e, _ in batches)
    flat = [float(v) for _, e, _ in batches for v in e]
    again = [float(e) for _, e, _ in ChunkedShowerDataset(tmp_path / "a.h5", chunk_size=8, seed=3)]
    assert flat == again
    rows = {float(e): i for i, e in enumerate(d.energies)}
    x, e, _ = batches[0]
    np.testing.assert_array_equal(x.numpy(), d.showers[[rows[float(v)] for v in e]])


def test_outputs_follow_the_umask_and_dead_writers_temps_are_swept(tmp_path):
    """Outputs are readable by the group and others as the umask says (mkstemp alone gives
    0600); a temp file left by a killed writer on this host is removed by the next write of
    the same output, a live writer's is not."""
    import subprocess
    import sys

    from simgan.io import _HOST, write_json_atomic
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.json.{_HOST}.{int(dead.stdout)}.abc.json"
    live = tmp_path / f".m.json.{_HOST}.{os.getppid()}.def.json"
    other_host = tmp_path / ".m.json.elsewhere.1.ghi.json"
    for p in (stale, live, other_host):
        p.write_text("partial")
    write_json_atomic(tmp_path / "m.json", {"a": 2})
    assert not stale.exists() and live.exists() and other_host.exists()


def test_corrupt_metadata_and_empty_root_tree_are_named(tmp_path):
    from simgan.domains.calorimeter.data.binning import reference_binning
    from simgan.domains.calorimeter.data.rootio import read_root, write_root
    d = _tiny()
    cc.write(tmp_path / "a.h5", d)
    with h5py.File(tmp_path / "a.h5", "a") as f:
        f.attrs[cc.META_ATTR] = '{"producer": "simgan'  # torn
    with pytest.raises(SimganError, match="a.h5: attribute 'simgan_metadata' is not valid JSON"):
        cc.inspect(tmp_path / "a.h5")
    empty = cc.ShowerData(np.zeros(0), np.zeros((0, 6480), np.float32), reference_binning())
    write_root(tmp_path / "e.root", empty)
    with pytest.raises(SimganError, match="e.root: TTree 'showers' has no entries"):
        read_root(tmp_path / "e.root", reference_binning())


def test_a_missing_optional_part_names_its_extra(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "uproot", None)  # as if simgan[root] were not installed
    cc.write(tmp_path / "in.h5", _tiny(2))
    assert main(["convert", str(tmp_path / "in.h5"), "--out", str(tmp_path / "o.root")]) == 2
    err = capsys.readouterr().err
    assert "ROOT files needs the Python package behind 'uproot'" in err and "pip install 'simgan[root]'" in err
    assert not (tmp_path / "o.root").exists()
