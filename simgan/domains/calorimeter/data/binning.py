"""CaloChallenge binning XML: <Bins><Bin pid name><Layer id r_edges n_bin_alpha/></Bin></Bins>.

Voxel order is (layer, alpha, r) with r fastest; a layer with r_edges="0" has no voxels.
Shipped layouts: the public datasets 1 (photons 368, pions 533 voxels), 2 (6480), 3 (40500)
and our reference calorimeter (the dataset-2 readout). A layer may carry grid="cartesian"
(CaloGAN conversions): then "r" is the row and "alpha" the column of a rectangular grid.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from simgan.errors import SimganError

SHIPPED = ("reference", "ds1-photons", "ds1-pions", "ds2", "ds3")


@dataclass(frozen=True)
class Layer:
    id: int
    r_edges: tuple[float, ...]
    n_alpha: int
    grid: str = "polar"

    @property
    def n_r(self) -> int:
        return max(len(self.r_edges) - 1, 0)

    @property
    def n_voxels(self) -> int:
        return self.n_r * self.n_alpha


@dataclass(frozen=True)
class Binning:
    particle: str
    pid: int
    layers: tuple[Layer, ...]
    source: str = ""

    @property
    def n_voxels(self) -> int:
        return sum(layer.n_voxels for layer in self.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def layer_slices(self) -> list[slice]:
        out, start = [], 0
        for layer in self.layers:
            out.append(slice(start, start + layer.n_voxels))
            start += layer.n_voxels
        return out

    @cached_property
    def voxel_xy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-voxel centre (x, y, r); polar layers in mm, cartesian layers in cell units."""
        xs, ys, rs = [], [], []
        for layer in self.layers:
            if layer.n_voxels == 0:
                continue
            edges = np.asarray(layer.r_edges, dtype=float)
            if layer.grid == "cartesian":
                row = np.arange(layer.n_r) + 0.5 - layer.n_r / 2
                col = np.arange(layer.n_alpha) + 0.5 - layer.n_alpha / 2
                x, y = np.repeat(col, layer.n_r), np.tile(row, layer.n_alpha)
                r = np.hypot(x, y)
            else:
                r_mid = 0.5 * (edges[:-1] + edges[1:])
                alpha = (np.arange(layer.n_alpha) + 0.5) * 2 * np.pi / layer.n_alpha
                if layer.n_alpha == 1:
                    alpha = np.zeros(1)
                r = np.tile(r_mid, layer.n_alpha)
                a = np.repeat(alpha, layer.n_r)
                x, y = r * np.cos(a), r * np.sin(a)
            xs.append(x)
            ys.append(y)
            rs.append(r)
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(rs)

    def to_xml(self) -> str:
        lines = ["<Bins>", f'  <Bin pid="{self.pid}" name="{self.particle}">']
        for layer in self.layers:
            edges = ",".join(_fmt(e) for e in layer.r_edges)
            grid = ' grid="cartesian"' if layer.grid == "cartesian" else ""
            lines.append(f'    <Layer id="{layer.id}" r_edges="{edges}" n_bin_alpha="{layer.n_alpha}"{grid}/>')
        lines += ["  </Bin>", "</Bins>", ""]
        return "\n".join(lines)

    def digest(self) -> str:
        """Identity of the layout (not of the file text): layers, edges, alpha bins."""
        key = ";".join(f"{l.id}:{','.join(_fmt(e) for e in l.r_edges)}:{l.n_alpha}:{l.grid}" for l in self.layers)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_binning_xml(text: str, source: str = "<xml>", particle: str | None = None) -> Binning:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise SimganError(f"{source}: binning XML does not parse: {exc}") from exc
    bins = [b for b in root.iter() if b.tag in ("Bin", "Particle") and b.find("Layer") is not None]
    if not bins:
        raise SimganError(f"{source}: binning XML has no <Bin> element with <Layer> children")
    if particle is not None:
        chosen = [b for b in bins if b.attrib.get("name") == particle]
        if not chosen:
            names = [b.attrib.get("name") for b in bins]
            raise SimganError(f"{source}: no <Bin name='{particle}'> (found {names})")
        bin_el = chosen[0]
    else:
        bin_el = bins[0]
    layers = []
    for el in bin_el.findall("Layer"):
        where = f"{source}: <Layer id={el.attrib.get('id')!r}>"
        try:
            edges = tuple(float(v) for v in el.attrib["r_edges"].split(",") if v.strip() != "")
            n_alpha = int(el.attrib.get("n_bin_alpha", "1"))
            lid = int(el.attrib["id"])
        except (KeyError, ValueError) as exc:
            raise SimganError(f"{where}: needs numeric id, r_edges and n_bin_alpha ({exc})") from exc
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise SimganError(f"{where}: r_edges must increase")
        if n_alpha < 1:
            raise SimganError(f"{where}: n_bin_alpha must be >= 1")
        layers.append(Layer(lid, edges, n_alpha, el.attrib.get("grid", "polar")))
    pid = int(bin_el.attrib.get("pid", "0") or 0)
    return Binning(bin_el.attrib.get("name", ""), pid, tuple(layers), source)


def load_binning(name_or_path: str) -> Binning:
    """A shipped layout by name, "calogan" (the CaloGAN files' own), or an XML file."""
    if name_or_path == "calogan":
        return calogan_binning()
    if name_or_path in SHIPPED:
        text = resources.files("simgan.domains.calorimeter.data").joinpath("binning", f"{name_or_path}.xml").read_text()
        return parse_binning_xml(text, source=name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise SimganError(f"{path}: binning XML not found (domain.geometry or --binning: an XML file or one of "
                          f"{', '.join(SHIPPED)}, calogan)")
    return parse_binning_xml(path.read_text(), source=str(path))


def reference_binning() -> Binning:
    """Our Geant4 calorimeter: 45 layers x 16 alpha x 9 r of 4.65 mm (the dataset-2 readout)."""
    edges = tuple(round(4.65 * i, 4) for i in range(10))
    return Binning("electron", 11, tuple(Layer(i, edges, 16) for i in range(45)), "reference")


# CaloGAN's three rectangular layers (rows x columns): layer_0 3x96, layer_1 12x12, layer_2 12x6
CALOGAN_LAYERS = {"layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6)}


def calogan_binning() -> Binning:
    """The CaloGAN files' own layout (`domain.geometry=calogan`): 504 voxels, cartesian layers."""
    layers = tuple(Layer(i, tuple(float(r) for r in range(rows + 1)), cols, "cartesian")
                   for i, (rows, cols) in enumerate(CALOGAN_LAYERS.values()))
    return Binning("calogan", 0, layers, "calogan")
