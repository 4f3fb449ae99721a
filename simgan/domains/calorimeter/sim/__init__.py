"""Reference simulators (real Geant4 through geant4-pybind)."""
