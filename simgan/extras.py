"""Optional parts and how to install them: Geant4 (the reference calorimeter simulation),
ROOT files (uproot), dask (scale-out), dask-jobqueue (Slurm clusters), NeuroTS and morphio
(neurons), corsikaio (CORSIKA particle files), onnxscript and onnxruntime (`simgan export`)."""

from __future__ import annotations

import importlib

from simgan.errors import SimganError

# module -> (extra, what it is for)
EXTRAS = {"geant4_pybind": ("geant4", "the Geant4 reference simulation"),
          "uproot": ("root", "ROOT files"),
          "dask.distributed": ("dask", "dask scale-out (--dask, generate.dask, validate.dask)"),
          "dask_jobqueue": ("slurm", "dask-jobqueue on Slurm"),
          "neurots": ("neuron", "the NeuroTS reference neuron simulation"),
          "morphio": ("neuron", "reading morphologies (SWC)"),
          "corsikaio": ("corsika", "reading CORSIKA particle files"),
          "onnxscript": ("export", "ONNX export (torch's exporter writes through onnxscript)"),
          "onnxruntime": ("export", "running exported ONNX graphs (the export's round trip)")}


def require(module: str):
    """Import an optional module, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, purpose = EXTRAS[module]
        raise SimganError(f"{purpose} needs the Python package behind '{module}', which is not installed "
                          f"({exc}): pip install 'simgan[{extra}]' (or 'simgan[all]')") from None
