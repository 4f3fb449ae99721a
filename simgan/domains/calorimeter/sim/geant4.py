"""Real Geant4 showers in the reference W/Si calorimeter (CaloChallenge dataset-2 readout).

90 physical layers of 1.4 mm W + 0.3 mm Si (153 mm), read out as 45 layers of two
physical layers; transverse readout in cylindrical coordinates about the beam axis with
the entrance point as origin: 16 angular bins x 9 radial bins of 4.65 mm (to 41.85 mm).
Scored with Geant4's own C++ primitive scorers (G4PSEnergyDeposit3D), one process per
worker (serial run manager); parallelism by processes, shards of fixed size so results
do not depend on the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from simgan.cpus import usable_cpus
from simgan.domains.calorimeter.sim.g4data import ensure_geant4_data
from simgan.extras import require
from simgan.seeding import derive_seed

N_PHYS_LAYERS = 90
N_LAYERS = 45
N_ALPHA = 16
N_R = 9
R_BIN_MM = 4.65
W_MM = 1.4
SI_MM = 0.3
CALO_R_MM = 150.0
N_VOXELS = N_LAYERS * N_ALPHA * N_R


@dataclass(frozen=True)
class G4Settings:
    particle: str = "e-"
    cut_mm: float = 0.7
    physics_list: str = "emstandard_opt1"
    theta_deg: float = 0.0


_STATE: dict = {}


def _build(settings: G4Settings):
    """Create the Geant4 application in this process (once)."""

    ensure_geant4_data()
    g4 = require("geant4_pybind")

    keep = []  # Python references keep the Geant4 objects alive

    class Detector(g4.G4VUserDetectorConstruction):
        def Construct(self):
            nist = g4.G4NistManager.Instance()
            vac = nist.FindOrBuildMaterial("G4_Galactic")
            w = nist.FindOrBuildMaterial("G4_W")
            si = nist.FindOrBuildMaterial("G4_Si")
            two_pi = 2 * math.pi
            layer_t = W_MM + SI_MM
            half_len = N_PHYS_LAYERS * layer_t / 2
            world_s = g4.G4Box("World", 1 * g4.m, 1 * g4.m, 1 * g4.m)
            world_lv = g4.G4LogicalVolume(world_s, vac, "World")
            world_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), world_lv, "World", None, False, 0)
            calo_s = g4.G4Tubs("Calo", 0, CALO_R_MM * g4.mm, half_len * g4.mm, 0, two_pi)
            calo_lv = g4.G4LogicalVolume(calo_s, vac, "Calo")
            calo_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, half_len * g4.mm), calo_lv, "Calo", world_lv, False, 0)
            # the tungsten is the layer volume itself: a replica must be its mother's only daughter
            layer_s = g4.G4Tubs("Layer", 0, CALO_R_MM * g4.mm, layer_t / 2 * g4.mm, 0, two_pi)
            layer_lv = g4.G4LogicalVolume(layer_s, w, "Layer")
            layer_pv = g4.G4PVReplica("Layer", layer_lv, calo_lv, g4.kZAxis, N_PHYS_LAYERS, layer_t * g4.mm)
            z_si = (layer_t / 2 - SI_MM / 2) * g4.mm  # silicon at the downstream end of each layer
            r_in = N_R * R_BIN_MM
            si_in_s = g4.G4Tubs("SiIn", 0, r_in * g4.mm, SI_MM / 2 * g4.mm, 0, two_pi)
            si_in_lv = g4.G4LogicalVolume(si_in_s, si, "SiIn")
            si_in_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, z_si), si_in_lv, "SiIn", layer_lv, False, 0)
            si_out_s = g4.G4Tubs("SiOut", r_in * g4.mm, CALO_R_MM * g4.mm, SI_MM / 2 * g4.mm, 0, two_pi)
            si_out_lv = g4.G4LogicalVolume(si_out_s, si, "SiOut")
            si_out_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, z_si), si_out_lv, "SiOut", layer_lv, False, 0)
            dphi = two_pi / N_ALPHA
            phi_s = g4.G4Tubs("SiPhi", 0, r_in * g4.mm, SI_MM / 2 * g4.mm, -dphi / 2, dphi)
            phi_lv = g4.G4LogicalVolume(phi_s, si, "SiPhi")
            phi_pv = g4.G4PVReplica("SiPhi", phi_lv, si_in_lv, g4.kPhi, N_ALPHA, dphi, 0)
            rho_s = g4.G4Tubs("SiRho", 0, R_BIN_MM * g4.mm, SI_MM / 2 * g4.mm, -dphi / 2, dphi)
            rho_lv = g4.G4LogicalVolume(rho_s, si, "SiRho")
            rho_pv = g4.G4PVReplica("SiRho", rho_lv, phi_lv, g4.kRho, N_R, R_BIN_MM * g4.mm, 0)
            keep.extend([world_s, world_lv, calo_s, calo_lv, calo_pv, layer_s, layer_lv, layer_pv, si_in_s,
                         si_in_lv, si_in_pv, si_out_s, si_out_lv, si_out_pv, phi_s, phi_lv, phi_pv, rho_s,
                         rho_lv, rho_pv])
            return world_pv

        def ConstructSDandField(self):
            sdm = g4.G4SDManager.GetSDMpointer()
            for det_name, prim, lv in (
                ("Readout", g4.G4PSEnergyDeposit3D("Edep", N_PHYS_LAYERS, N_ALPHA, N_R, 3, 1, 0), "SiRho"),
                ("Outer", g4.G4PSEnergyDeposit("Edep"), "SiOut"),
                ("Absorber", g4.G4PSEnergyDeposit("Edep"), "Layer"),
            ):
                det = g4.G4MultiFunctionalDetector(det_name)
                sdm.AddNewDetector(det)
                det.RegisterPrimitive(prim)
                self.SetSensitiveDetector(lv, det)
                keep.extend([det, prim])

    class Gun(g4.G4VUserPrimaryGeneratorAction):
        def __init__(self):
            super().__init__()
            self.gun = g4.G4ParticleGun(1)
            self.gun.SetParticleDefinition(g4.G4ParticleTable.GetParticleTable().FindParticle(settings.particle))
            th = math.radians(settings.theta_deg)
            direction = g4.G4ThreeVector(math.sin(th), 0, math.cos(th))
            self.gun.SetParticleMomentumDirection(direction)
            # start 1 mm upstream so the particle enters the front face at the origin
            self.gun.SetParticlePosition(g4.G4ThreeVector(-math.sin(th) * g4.mm, 0, -math.cos(th) * g4.mm))
            self.energies = np.array([1000.0])

        def GeneratePrimaries(self, event):
            self.gun.SetParticleEnergy(float(self.energies[event.GetEventID()]) * g4.MeV)
            self.gun.GeneratePrimaryVertex(event)

    class Events(g4.G4UserEventAction):
        def __init__(self):
            super().__init__()
            self.ids = None
            self.reset(1)

        def reset(self, n):
            self.voxels = np.zeros((n, N_PHYS_LAYERS * N_ALPHA * N_R))
            self.outer = np.zeros(n)
            self.absorber = np.zeros(n)

        def EndOfEventAction(self, event):
            if self.ids is None:
                sdm = g4.G4SDManager.GetSDMpointer()
                self.ids = [sdm.GetCollectionID(n) for n in ("Readout/Edep", "Outer/Edep", "Absorber/Edep")]
            hce = event.GetHCofThisEvent()
            i = event.GetEventID()
            row = self.voxels[i]
            for idx, e in hce.GetHC(self.ids[0]):
                row[idx] += e / g4.MeV
            self.outer[i] = sum(e for _, e in hce.GetHC(self.ids[1])) / g4.MeV
            self.absorber[i] = sum(e for _, e in hce.GetHC(self.ids[2])) / g4.MeV

    run_manager = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.Serial)
    detector = Detector()
    run_manager.SetUserInitialization(detector)
    physics = g4.G4VModularPhysicsList()
    em = {"emstandard_opt1": g4.G4EmStandardPhysics_option1, "emstandard_opt2": g4.G4EmStandardPhysics_option2}
    physics.RegisterPhysics(em[settings.physics_list]())
    run_manager.SetUserInitialization(physics)
    gun, events = Gun(), Events()
    run_manager.SetUserAction(gun)
    run_manager.SetUserAction(events)
    ui = g4.G4UImanager.GetUIpointer()
    for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0", "/tracking/verbose 0"):
        ui.ApplyCommand(cmd)
    run_manager.Initialize()
    # SetDefaultCutValue from Python has no effect in this binding: set the cut through the UI
    ui.ApplyCommand(f"/run/setCut {settings.cut_mm} mm")
    gun.energies = np.array([1000.0])
    run_manager.BeamOn(1)  # warm-up: physics tables are built at the first BeamOn
    cut = _production_cut_mm(g4)
    if cut is not None and abs(cut - settings.cut_mm) > 1e-9:
        raise RuntimeError(f"Geant4 production cut is {cut} mm, expected {settings.cut_mm} mm")
    _STATE.update(g4=g4, run_manager=run_manager, gun=gun, events=events, keep=(keep, detector, physics),
                  settings=settings, version=_geant4_version(g4), cut_checked=cut)


def _production_cut_mm(g4) -> float | None:
    try:
        table = g4.G4ProductionCutsTable.GetProductionCutsTable()
        couple = table.GetMaterialCutsCouple(0)
        return couple.GetProductionCuts().GetProductionCut(0) / g4.mm
    except Exception:  # binding without these accessors: nothing to check
        return None


def _geant4_version(g4) -> str:
    return str(getattr(g4, "G4Version", "unknown")).replace("$Name:", "").replace("$", "").strip()


def _die_with_parent(parent_pid: int) -> None:
    """A pool worker ends when the process that started it dies, even by kill -9 (otherwise
    it waits on its pipe forever): Linux's parent-death signal, and a check for a parent
    already gone before it was set."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def _worker_init(settings: G4Settings, quiet: bool, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    if quiet:  # Geant4's banner and C++ output go to fd 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
    _build(settings)


def run_events(energies_mev: np.ndarray, seed: int) -> dict:
    """Simulate one shard in this (already initialised) process."""
    st = _STATE
    g4, events = st["g4"], st["events"]
    n = len(energies_mev)
    events.reset(n)
    st["gun"].energies = np.asarray(energies_mev, dtype=float)
    g4.G4Random.setTheSeed(int(seed))
    t0 = time.perf_counter()
    st["run_manager"].BeamOn(n)
    wall = time.perf_counter() - t0
    readout = events.voxels.reshape(n, N_LAYERS, 2, N_ALPHA * N_R).sum(axis=2).reshape(n, N_VOXELS)
    return {
        "voxels_mev": readout.astype(np.float32),
        "outer_mev": events.outer.copy(),
        "absorber_mev": events.absorber.copy(),
        "wall_s": wall,
        "geant4_version": st["version"],
        "cut_checked_mm": st["cut_checked"],
    }


def _shard_task(args):
    energies, seed = args
    return run_events(energies, seed)


def shard_seed(seed: int, shard: int) -> int:
    return derive_seed(seed, shard, bound=900_000_000, bits=32) + 1  # Geant4 takes a positive int


class GeantPool:
    """Worker processes, each with its own Geant4 application."""

    def __init__(self, settings: G4Settings, workers: int, quiet: bool = True):
        self.settings = settings
        self.workers = max(1, workers or usable_cpus())
        self._ex = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp.get_context("spawn"),
            initializer=_worker_init, initargs=(settings, quiet, os.getpid()),
        )

    def map_shards(self, tasks: list[tuple[np.ndarray, int]]):
        """Yield results in task order."""
        yield from self._ex.map(_shard_task, tasks)

    def close(self):
        self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def settings_dict(settings: G4Settings) -> dict:
    return asdict(settings)


def _dask_shard(settings: G4Settings, energies: np.ndarray, seed: int) -> dict:
    """Runs inside a dask worker process: one Geant4 application per worker, built on first use."""
    if not _STATE:
        _worker_init(settings, quiet=True)
    elif _STATE["settings"] != settings:
        raise RuntimeError(f"this dask worker already runs Geant4 with {_STATE['settings']}; use a fresh cluster")
    return run_events(energies, seed)


class DaskGeantPool:
    """The GeantPool interface over a dask.distributed client (LocalCluster or a Slurm cluster).

    Workers must be processes (Geant4 is one application per process).
    """

    def __init__(self, settings: G4Settings, client):
        self.settings = settings
        self.client = client
        self.workers = max(1, len(client.scheduler_info().get("workers", {})))

    def map_shards(self, tasks: list[tuple[np.ndarray, int]]):
        futures = [self.client.submit(_dask_shard, self.settings, e, s, pure=False) for e, s in tasks]
        for f in futures:
            yield f.result()

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
