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


def _import_names(dist_name: str) -> list[str]:
    """The top-level modules a distribution installs (from its RECORD), e.g. psycopg-binary ->
    psycopg_binary, geant4-pybind -> geant4_pybind."""
    from importlib import metadata

    dist = metadata.distribution(dist_name)
    top = (dist.read_text("top_level.txt") or "").split()
    if not top:
        for f in dist.files or ():
            parts = f.parts
            if len(parts) == 1 and parts[0].endswith(".py") and parts[0] != "__init__.py":
                top.append(parts[0][:-3])
            elif len(parts) > 1 and parts[1] == "__init__.py" and not parts[0].endswith((".dist-info", ".data")):
                top.append(parts[0])
    return sorted({t for t in top if t.isidentifier() and not t.startswith("_")})


def check_installed(package: str = "simgan") -> list[str]:
    """Every distribution that an extra of the installed `package` asks for: installed, at a
    version its range admits, and importable (each top-level module). Returns one line per
    problem, naming the extra, the distribution and the error; empty when all is well.
    (geant4_pybind imports only once its data variables are set: the caller sees to that.)"""
    from importlib import metadata

    from packaging.requirements import Requirement

    provided = metadata.metadata(package).get_all("Provides-Extra") or []
    problems = []
    seen = set()
    for line in metadata.requires(package) or ():
        req = Requirement(line)
        extras = [m for m in provided if req.marker is not None and req.marker.evaluate({"extra": m})]
        if req.name == package or not extras:
            continue  # the self-references of `all`/`test`, the core's own requirements
        key = req.name.lower()
        if key in seen:
            continue
        seen.add(key)
        where = f"extra '{extras[0]}': {req}"
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{where}: not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{where}: version {version} installed")
            continue
        for module in _import_names(req.name):
            try:
                importlib.import_module(module)
            except Exception as exc:  # an ImportError, or whatever a broken build raises at import
                problems.append(f"{where}: import {module} ({req.name} {version}) fails: "
                                f"{type(exc).__name__}: {exc}")
    return problems

