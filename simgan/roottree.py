"""Opening a ROOT TTree through uproot (the optional `root` extra), with errors that name the
file and the tree; each domain reads its own branches."""

from __future__ import annotations

from pathlib import Path

from simgan.errors import SimganError
from simgan.extras import require


def open_root_tree(path, tree: str):
    """(the open ROOT file, its TTree `tree`), or a SimganError naming the file and what is wrong."""
    uproot = require("uproot")

    path = Path(path)
    if not path.is_file():
        raise SimganError(f"{path}: file not found")
    try:
        f = uproot.open(path)
    except Exception as exc:
        raise SimganError(f"{path}: not a readable ROOT file: {exc}") from None
    if tree not in f:
        f.close()
        raise SimganError(f"{path}: no TTree '{tree}' (found {list(f.keys())})")
    return f, f[tree]
