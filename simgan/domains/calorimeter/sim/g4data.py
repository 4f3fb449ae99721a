"""The Geant4 data tables the EM standard physics needs, generated offline.

No PyPI or Debian package ships the Geant4 data sets and the network is closed, so we
make the few tables option1/option2 read, on first use, into a cache folder (atomically):

* ENSDFSTATE.dat (empty) and an empty PhotonEvaporation folder: needed to start.
* brem_SB/br<Z>: Seltzer-Berger bremsstrahlung tables (used below 1 GeV), computed from
  Tsai's screened Bethe-Heitler cross section (Thomas-Fermi screening, Coulomb
  correction, electron-electron term); it matches Geant4's own relativistic model at 1 GeV.
* epics2017/phot/pe-*: Livermore photoelectric with one shell of ~100 eV binding, its
  cross section taken from Geant4's Sandia parameterisation.

Differences from stock Geant4: bremsstrahlung below 1 GeV from the analytic formula;
photoelectric with one shell; no Rayleigh, no fluorescence.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from simgan.extras import require

DATA_VERSION = "g4data-v2"
ALPHA = 1.0 / 137.035999
RE2_MB = 79.4079  # classical electron radius squared, millibarn
ME_MEV = 0.51099895
Z_MAX = 99

SB_KAPPA = np.array([
    1e-12, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
    0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.99, 0.995, 0.999, 0.9995, 0.9999,
    0.99995, 0.99999, 1.0,
])
SB_LOG_T = np.linspace(np.log(1e-3), np.log(1e4), 57)  # ln(T/MeV), 1 keV .. 10 GeV


def cache_root() -> Path:
    base = os.environ.get("SIMGAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "simgan"
    )
    return Path(base) / DATA_VERSION


def tsai_scaled_dcs(Z: int, kappa: np.ndarray, kinetic_mev: np.ndarray) -> np.ndarray:
    """chi = (beta^2/Z^2) k dsigma/dk in millibarn (Tsai, Rev. Mod. Phys. 46 (1974) eq. 3.9)."""
    T = np.asarray(kinetic_mev, dtype=float)
    E = T + ME_MEV
    k = kappa * T
    Ep = E - k
    y = k / E
    delta = 100.0 * ME_MEV * k / (E * Ep)
    gam = delta / Z ** (1.0 / 3.0)
    eps = delta / Z ** (2.0 / 3.0)
    phi1 = 20.863 - 2 * np.log1p((0.55846 * gam) ** 2) - 4 * (1 - 0.6 * np.exp(-0.9 * gam) - 0.4 * np.exp(-1.5 * gam))
    phi2 = phi1 - (2.0 / 3.0) / (1 + 6.5 * gam + 6 * gam**2)
    psi1 = 28.340 - 2 * np.log1p((3.621 * eps) ** 2) - 4 * (1 - 0.7 * np.exp(-8 * eps) - 0.3 * np.exp(-29.2 * eps))
    psi2 = psi1 - (2.0 / 3.0) / (1 + 40 * eps + 400 * eps**2)
    a2 = (ALPHA * Z) ** 2
    fc = a2 * (1 / (1 + a2) + 0.20206 - 0.0369 * a2 + 0.0083 * a2**2 - 0.002 * a2**3)
    lnz = np.log(Z)
    body = (4 / 3 - 4 / 3 * y + y * y) * (Z * Z * (phi1 - 4 / 3 * lnz - 4 * fc) + Z * (psi1 - 8 / 3 * lnz)) + (
        2 / 3
    ) * (1 - y) * (Z * Z * (phi1 - phi2) + Z * (psi1 - psi2))
    beta2 = T * (T + 2 * ME_MEV) / E**2
    return np.clip(beta2 / Z**2 * ALPHA * RE2_MB * body, 0.0, None)


def _write_sb(folder: Path) -> None:
    folder.mkdir(parents=True)
    T = np.exp(SB_LOG_T)
    for Z in range(1, Z_MAX + 1):
        chi = tsai_scaled_dcs(Z, SB_KAPPA[None, :], T[:, None])  # (NY, NX)
        lines = [f"0 {len(SB_KAPPA)} {len(T)}", " ".join(f"{v:.6e}" for v in SB_KAPPA),
                 " ".join(f"{v:.6e}" for v in SB_LOG_T)]
        lines += [" ".join(f"{v:.6e}" for v in row) for row in chi]
        (folder / f"br{Z}").write_text("\n".join(lines) + "\n")


def _write_photoelectric(folder: Path) -> None:
    g4 = require("geant4_pybind")  # the caller has set the data variables

    folder.mkdir(parents=True)
    # the Sandia tables are filled when the first material is built: without one they read as garbage
    material = g4.G4NistManager.Instance().FindOrBuildMaterial("G4_W")
    sandia = material.GetSandiaTable()
    coeff = g4.G4doubleVector([0.0] * 4)
    energies = np.geomspace(1e-4, 1e5, 240)  # MeV, from the 100 eV binding up
    never = 1e10  # MeV: fit thresholds above any energy, so the table is always used
    for Z in range(1, Z_MAX + 1):
        rows = []
        for e in energies:
            sandia.GetSandiaCofPerAtom(Z, e * g4.MeV, coeff)
            c = list(coeff)
            ee = e * g4.MeV
            cs = (c[0] / ee + c[1] / ee**2 + c[2] / ee**3 + c[3] / ee**4) / g4.barn
            rows.append(f"{e:.8e} {max(cs, 0.0) * e**3:.8e}")
        (folder / f"pe-cs-{Z}.dat").write_text(
            f"{energies[0]:.8e} {energies[-1]:.8e} {len(energies)}\n{len(energies)}\n" + "\n".join(rows) + "\n"
        )
        params = f"1 1 {never:.1e}\n1.0e-4 0 0 0 0 0 0\n"
        (folder / f"pe-high-{Z}.dat").write_text(params)
        (folder / f"pe-low-{Z}.dat").write_text(params)


def env_for(root: Path) -> dict[str, str]:
    return {
        "GEANT4_DATA_DIR": str(root),
        "G4LEDATA": str(root / "G4EMLOW"),
        "G4ENSDFSTATEDATA": str(root / "G4ENSDFSTATE"),
        "G4LEVELGAMMADATA": str(root / "PhotonEvaporation"),
    }


def ensure_geant4_data() -> Path:
    """Set the Geant4 data variables and build the tables if missing. Call before importing geant4_pybind."""
    root = cache_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    if not (root / "COMPLETE").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{DATA_VERSION}.", dir=root.parent))
        try:
            os.environ.update(env_for(tmp))  # lets geant4_pybind import without its installer
            (tmp / "G4ENSDFSTATE").mkdir()
            (tmp / "G4ENSDFSTATE" / "ENSDFSTATE.dat").write_text("")
            (tmp / "PhotonEvaporation").mkdir()
            _write_sb(tmp / "G4EMLOW" / "brem_SB")
            _write_photoelectric(tmp / "G4EMLOW" / "epics2017" / "phot")
            (tmp / "COMPLETE").write_text(DATA_VERSION + "\n")
            try:
                os.rename(tmp, root)
            except OSError:  # another process finished first; theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    os.environ.update(env_for(root))
    return root
