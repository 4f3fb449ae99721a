"""The calorimeter validation: CaloChallenge features, the classifier tests on real Geant4, the gate."""

import numpy as np
import pytest

from pipeline.cli import main
from simgan.domains.calorimeter.config import CaloValidateConfig as ValidateConfig
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.data.binning import Binning, Layer
from simgan.domains.calorimeter.features import feature_names, high_level_features
from simgan.errors import SimganError


def test_features_hand_computed():
    # one layer, 2 r-bins (0-1, 1-3) x 2 alpha bins: voxel centres r=0.5, 2.0 at alpha pi/2, 3pi/2
    b = Binning("t", 0, (Layer(0, (0.0, 1.0, 3.0), 2),))
    shower = np.array([[1.0, 3.0, 0.0, 0.0]])  # order (alpha, r): alpha0: r0=1, r1=3
    f = dict(zip(feature_names(b), high_level_features(shower, np.array([8.0]), b)[0]))
    assert f["etot_over_einc"] == pytest.approx(0.5)
    assert f["e_layer_00"] == pytest.approx(4.0)
    assert f["ce_r_layer_00"] == pytest.approx((0.5 * 1 + 2.0 * 3) / 4)
    assert f["ce_y_layer_00"] == pytest.approx((0.5 * 1 + 2.0 * 3) / 4)  # alpha0 centre is at +y
    assert f["ce_x_layer_00"] == pytest.approx(0.0, abs=1e-12)
    assert f["width_r_layer_00"] == pytest.approx(np.sqrt((0.25 * 1 + 4 * 3) / 4 - 1.625**2))
    assert f["sparsity_layer_00"] == pytest.approx(0.5)
    thr = dict(zip(feature_names(b), high_level_features(shower, np.array([8.0]), b, threshold_mev=2.0)[0]))
    assert thr["e_layer_00"] == pytest.approx(3.0) and thr["sparsity_layer_00"] == pytest.approx(0.25)


def _distorted(path, out):
    d = cc.read(path)
    s = d.showers.reshape(len(d), 45, 144) * 0.9  # energies scaled by 0.9
    s = np.concatenate([np.zeros_like(s[:, :1]), s[:, :-1]], 1)  # one layer deeper
    d.showers = s.reshape(len(d), -1)
    return cc.write(out, d)


@pytest.mark.slow
def test_validate_geant4_vs_geant4_passes_and_distorted_fails(g4_pair, tmp_path, capsys):
    a, b = g4_pair
    from tests.conftest import QUICKSTART
    # the quickstart's gate, one classifier seed, one candidate (b is Geant4: it has no sampler seeds);
    # its floor is the reference's halves of 150 showers, where the quickstart's limits (set for 480)
    # cannot judge (floors: response 3.6%, E_tot/E_inc separation 0.17, mean separation 0.086)
    fast = ["-c", str(QUICKSTART), "validate.classifier_seeds=1", "validate.draws=1",
            "validate.gate.response_deviation_max=0.06", "validate.gate.separation_etot_max=0.3",
            "validate.gate.separation_mean_max=0.15"]
    assert main(["validate", "--reference", str(a), "--candidate", str(b), "--out", str(tmp_path / "same"), *fast]) == 0
    import json
    m = json.loads((tmp_path / "same" / "metrics.json").read_text())
    assert m["auc_high"] < 0.65 and m["separation_power"]["etot_over_einc"] < 0.1 and m["gate"]["pass"]
    assert {"auc_high", "auc_low", "separation_power", "fpd", "kpd", "gate"} <= set(m)
    assert (tmp_path / "same" / "report.html").is_file() and (tmp_path / "same" / "features.png").is_file()
    bad = _distorted(b, tmp_path / "bad.h5")
    rc = main(["validate", "--reference", str(a), "--candidate", str(bad), "--out", str(tmp_path / "bad"), *fast,
               "validate.plots=false"])
    assert rc == 3 and "gate failed" in capsys.readouterr().err
    m = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert m["auc_high"] > 0.95 and not m["gate"]["pass"]


@pytest.mark.slow
def test_validate_with_dask_matches_in_process(g4_pair, tmp_path):
    from distributed import Client, LocalCluster

    from simgan.domains.calorimeter.validate import validate
    a, b = g4_pair
    cfg = ValidateConfig(classifier_seeds=1, plots=False, chunk_size=64)
    m1 = validate(a, b, tmp_path / "p", cfg, 0.01515)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cl, Client(cl) as c:
        m2 = validate(a, b, tmp_path / "d", cfg, 0.01515, client=c)
    assert m1["separation_power"] == m2["separation_power"]


def test_mismatched_geometry_refused(g4_pair, tmp_path):
    d = cc.read(g4_pair[0])
    small = Binning("x", 0, tuple(Layer(i, (0.0, 4.65), 16) for i in range(45)))
    other = cc.write(tmp_path / "o.h5", cc.ShowerData(d.energies, np.zeros((len(d), small.n_voxels), np.float32), small))
    from simgan.domains.calorimeter.validate import validate
    with pytest.raises(SimganError, match="geometry"):
        validate(g4_pair[0], other, tmp_path / "v", ValidateConfig(), 0.0)


def test_dnn_classifier_equal_and_distorted(g4_pair, tmp_path):
    """The CaloChallenge DNN classifier test: about 0.5 for Geant4 against Geant4, above 0.95
    for a visibly distorted sample (small samples: 300 showers per class)."""
    from simgan.domains.calorimeter.features import features_from_file
    from simgan.metrics.classifier import dnn_classifier_test, dnn_high_level_inputs
    a, b = g4_pair
    bad = _distorted(b, tmp_path / "bad.h5")
    (fa, ea), (fb, eb), (fx, ex) = (features_from_file(p, threshold_mev=0.01515) for p in (a, b, bad))
    names = feature_names(cc.inspect(a).binning)
    same = dnn_classifier_test(dnn_high_level_inputs(fa, ea, names), dnn_high_level_inputs(fb, eb, names), runs=3)
    assert 0.38 < same["auc"] < 0.65 and same["runs"] == 3 and same["n_per_class"] == 300
    diff = dnn_classifier_test(dnn_high_level_inputs(fa, ea, names), dnn_high_level_inputs(fx, ex, names), runs=3)
    assert diff["auc"] > 0.95


@pytest.mark.slow
def test_validate_cli_dnn_floor_and_breakdown(g4_pair, tmp_path, capsys):
    import json

    from tests.conftest import QUICKSTART
    a, b = g4_pair
    bad = _distorted(b, tmp_path / "bad.h5")
    rc = main(["validate", "--reference", str(a), "--candidate", str(bad), "--floor", str(b), "--classifier", "dnn",
               "--out", str(tmp_path / "v"), "-c", str(QUICKSTART), "validate.dnn_runs=1", "validate.dnn_epochs=12", "validate.plots=false",
               "validate.classifier_seeds=1", "validate.draws=1"])
    assert rc == 3
    out = capsys.readouterr().out
    assert "CaloChallenge DNN classifier (1 runs)" in out and "Geant4 floor" in out
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["auc_high_dnn"] > 0.95 and m["floor"]["auc_high_dnn"] < 0.7
    assert m["floor_source"].startswith(str(b)) and m["floor"]["separation_power_mean"] < 0.1
    # the response is off by 10% in every bin, which the gate sees; the floor is not
    assert all(abs(r["deviation"] + 0.1) < 0.02 for r in m["response_by_energy"])
    assert m["gate"]["checks"]["response_deviation_max"]["pass"] is False
    assert m["floor"]["response_deviation_max"] < 0.03
    assert m["auc_high_by_group"]["layer_energies"] > 0.9 and len(m["auc_high_by_energy"]) == 3
    report = (tmp_path / "v" / "report.md").read_text()
    assert "What gives it away" in report and "Geant4 floor" in report


def test_validate_refuses_the_reference_as_candidate(g4_pair, tmp_path, capsys):
    import shutil
    a, _ = g4_pair
    copy = tmp_path / "copy.h5"
    shutil.copy(a, copy)
    for cand in (a, copy):
        out = tmp_path / f"v_{cand.name}"
        assert main(["validate", "--reference", str(a), "--candidate", str(cand), "--out", str(out)]) == 2
        assert "the reference file itself" in capsys.readouterr().err and not out.exists()


def test_validate_refuses_samples_too_small_to_classify(g4_pair, tmp_path, capsys):
    from simgan.domains.calorimeter.data.calochallenge import read, write
    a, b = g4_pair
    d = read(b)
    for n in (0, 1, 2, 19):
        small = tmp_path / f"c{n}.h5"
        write(small, d.subset(np.arange(n)) if n else d.subset(np.arange(0)))
        rc = main(["validate", "--reference", str(a), "--candidate", str(small), "--out", str(tmp_path / f"v{n}")])
        assert rc == 2 and f"the candidate holds {n} showers; validation needs at least 20" in capsys.readouterr().err
        assert not (tmp_path / f"v{n}").exists()


def test_validate_checks_the_candidates_units_as_the_readers_do(g4_pair, tmp_path, capsys):
    """A candidate written in GeV (energies and deposits / 1000) is named with the readers' own
    unit check, not compared into 'response within nan%'; nothing is written."""
    import shutil

    import h5py
    a, b = g4_pair
    gev = tmp_path / "gev.h5"
    shutil.copy(b, gev)
    with h5py.File(gev, "r+") as f:
        f["incident_energies"][...] = f["incident_energies"][...] / 1000
        f["showers"][...] = f["showers"][...] / 1000
    out = tmp_path / "v"
    assert main(["validate", "--reference", str(a), "--candidate", str(gev), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{gev}: dataset 'incident_energies'" in err and "looks like GeV" in err and "nan" not in err
    assert not out.exists()
