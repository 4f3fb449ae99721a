"""A validation report written twice: report.md (the lines as given) and report.html (headings,
tables as preformatted rows, images), both atomically."""

from __future__ import annotations

import html
from pathlib import Path

from simgan.io import atomic_path


def write_markdown_report(out_dir: Path, md: list[str], title: str) -> None:
    with atomic_path(Path(out_dir) / "report.md") as tmp:
        tmp.write_text("\n".join(md))
    body = []
    for ln in md:
        if ln.startswith("!["):
            body.append(f'<img src="{html.escape(ln[ln.index("(") + 1:-1])}" style="max-width:100%">')
        elif ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            body.append(f"<h{level}>{html.escape(ln.lstrip('# '))}</h{level}>")
        elif ln:
            body.append(f"<pre>{html.escape(ln)}</pre>" if ln.startswith("|") else f"<p>{html.escape(ln)}</p>")
    with atomic_path(Path(out_dir) / "report.html") as tmp:
        tmp.write_text(f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
                       + "\n".join(body) + "</body></html>\n")


def fmt(v, digits: int = 3) -> str:
    """A figure for a report table: n/a for a missing or non-finite value."""
    import math
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"
