"""The shared plotting helper (simgan.report.plots): densities with Poisson errors, profiles
with standard errors, labels with units, and a figure in the field's style written to disk."""

import numpy as np

from simgan.report.plots import axis_label, compare_hist, compare_profile, density, figure, profile_stats, save


def test_density_and_its_poisson_error():
    bins = np.array([0.0, 1.0, 2.0, 4.0])
    h, e = density(np.array([0.5, 0.5, 1.5, 3.0, 9.0, -5.0]), bins)  # outside values go to the end bins
    assert np.isclose((h * np.diff(bins)).sum(), 1.0)
    np.testing.assert_allclose(h, [3 / 6, 1 / 6, 2 / 12])
    np.testing.assert_allclose(e, [np.sqrt(3) / 6, 1 / 6, np.sqrt(2) / 12])


def test_profile_statistics_and_their_errors():
    rng = np.random.default_rng(0)
    x = np.repeat([0.5, 1.5], 40000)
    y = np.concatenate([rng.normal(10, 2, 40000), rng.normal(20, 4, 40000)])
    mean, err = profile_stats(x, y, np.array([0, 1, 2.0]), "mean")
    np.testing.assert_allclose(mean, [10, 20], atol=0.05)
    np.testing.assert_allclose(err, [2 / 200, 4 / 200], rtol=0.02)
    med, merr = profile_stats(x, y, np.array([0, 1, 2.0]), "median")
    np.testing.assert_allclose(merr, 1.2533 * err, rtol=0.02)
    res, rerr = profile_stats(x, y, np.array([0, 1, 2.0]), "resolution")
    np.testing.assert_allclose(res, [0.2, 0.2], atol=0.005)
    assert np.isnan(profile_stats(np.array([0.5]), np.array([1.0]), np.array([0, 1.0]))[0]).all()  # one entry: none


def test_labels_carry_units_and_a_figure_is_written(tmp_path):
    assert axis_label("E", "MeV") == "E [MeV]" and axis_label("E_tot / E_inc", "1") == "E_tot / E_inc"
    rng = np.random.default_rng(1)
    with figure(1, 2, ratio=True) as (fig, panels):
        compare_hist(panels[0], rng.normal(size=500), rng.normal(size=500), rng.normal(size=500),
                     np.linspace(-3, 3, 80), "E", "MeV", legend=True)
        ax, rax = panels[0]
        assert ax.get_ylabel() == "density [1/MeV]" and rax.get_xlabel() == "E [MeV]"
        x = np.array([1.0, 3.0, 10.0, 30.0])
        compare_profile(panels[1][0], x, (x, 0.1 * x), (x * 1.1, 0.1 * x), (x, 0.2 * x), "energy", "GeV", "mean",
                        "MeV", logx=True)
        fig.canvas.draw()
        assert not any(t.get_text() for t in ax.get_xticklabels() if t.get_visible())  # the ratio panel's x only
        ticks = [t.get_text() for t in panels[1][1].xaxis.get_majorticklabels() if t.get_text()]  # (shared x)
        assert {"2", "5", "10", "20"} <= set(ticks)  # log ticks as plain numbers, 1-2-5 per decade
        path = save(fig, tmp_path / "p.png")
    assert path.stat().st_size > 10000
