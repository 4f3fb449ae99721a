"""Run every benchmark and print one JSON document (copy the numbers into BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_geant4, bench_generate, bench_loader  # noqa: E402

if __name__ == "__main__":
    print(json.dumps({"geant4": bench_geant4.main(), "loader": bench_loader.main(),
                      "generate": bench_generate.main()}, indent=2))
