"""Tiling a domain with the standard and the dual grid of patches.

A domain of ``rows`` x ``cols`` cells is placed in a padded frame whose cell (``half``, ``half``) is the
domain's cell (0, 0), ``half`` = P / 2. The **standard** grid has patch origins at domain cells 0, P, 2P, ...
and the **dual** grid at -P/2, P/2, 3P/2, ...; each grid has as many patches as it takes to cover every
domain cell exactly once, so the padded frame reaches past the domain on the far side when ``rows`` or
``cols`` is not a multiple of P, and the dual grid's first and last patches reach half outside it. Every
cell of a standard patch's ``ring``-cell border lies at least P/2 - ring cells inside a dual patch and
vice versa, which is what lets one grid's interiors supply the other's boundary rings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Grids by name: the patch origins' offset (rows, cols) from the domain's first cell, in half patches.
GRID_SHIFTS = {"standard": (0, 0), "dual": (1, 1), "rows": (1, 0), "cols": (0, 1)}
#: The two grids that samples are cut on.
GRIDS = ("standard", "dual")


class PredictError(ValueError):
    """Full-domain prediction cannot run on these inputs; the message names what is wrong and what was expected."""


@dataclass(frozen=True)
class Tiling:
    """The two grids of ``patch`` x ``patch`` patches over a ``rows`` x ``cols`` domain.

    Origins are in the padded frame (:attr:`padded_shape`, domain cell (i, j) at (i + half, j + half)).
    """

    rows: int
    cols: int
    patch: int = 32
    ring: int = 2

    def __post_init__(self):
        if self.patch < 4 or self.patch % 2:
            raise PredictError(f"Tiling: patch={self.patch} must be an even number of cells >= 4")
        if not 1 <= self.ring <= self.patch // 4:
            raise PredictError(f"Tiling: ring={self.ring} must be between 1 and {self.patch // 4} cells "
                               f"(a ring must lie inside the other grid's patches, not on their rings)")
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if value < self.patch:
                raise PredictError(f"the domain has {value} {name}: full-domain prediction needs at least one whole "
                                   f"{self.patch}-cell patch ({self.patch} x {self.patch} cells, "
                                   f"{self.patch} or more rows and columns)")

    @property
    def half(self) -> int:
        return self.patch // 2

    def _axis(self, cells: int, shifted: int) -> tuple[int, int]:
        """First padded-frame origin and number of patches along an axis of ``cells`` cells."""
        return (0, math.ceil((cells + self.half) / self.patch)) if shifted else (self.half, math.ceil(cells / self.patch))

    @cached_property
    def padded_shape(self) -> tuple[int, int]:
        """Cells of the padded frame: the domain plus what the grids' outermost patches reach beyond it."""
        def extent(cells: int) -> int:
            return max(first + count * self.patch for first, count in (self._axis(cells, 0), self._axis(cells, 1)))
        return extent(self.rows), extent(self.cols)

    def origins(self, grid: str) -> np.ndarray:
        """(n, 2) int64: the padded-frame (row, col) origin of every patch of ``grid``, row-major."""
        if grid not in GRID_SHIFTS:
            raise PredictError(f"grid={grid!r}: expected one of {tuple(GRID_SHIFTS)}")
        shift_rows, shift_cols = GRID_SHIFTS[grid]
        (first_row, n_rows), (first_col, n_cols) = self._axis(self.rows, shift_rows), self._axis(self.cols, shift_cols)
        rows = first_row + self.patch * np.arange(n_rows)
        cols = first_col + self.patch * np.arange(n_cols)
        r, c = np.meshgrid(rows, cols, indexing="ij")
        return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64)

    def domain_origins(self, grid: str) -> np.ndarray:
        """(n, 2): the same origins in domain cells (negative where a patch starts before the domain)."""
        return self.origins(grid) - self.half

    @cached_property
    def ring_mask(self) -> np.ndarray:
        """(patch, patch) bool: the ``ring``-cell border of a patch."""
        mask = np.ones((self.patch, self.patch), dtype=bool)
        mask[self.ring:-self.ring, self.ring:-self.ring] = False
        return mask

    def cells(self, grid: str, *, part: str = "all") -> np.ndarray:
        """(n, k) int64 flat indices into the padded frame of each patch's cells: ``part`` "all" (k = P²,
        row-major), "interior" (inside the ring) or "ring"."""
        origins = self.origins(grid)
        offsets = np.arange(self.patch)
        rows = origins[:, 0, None, None] + offsets[None, :, None]
        cols = origins[:, 1, None, None] + offsets[None, None, :]
        flat = (rows * self.padded_shape[1] + cols).reshape(len(origins), -1)
        if part == "all":
            return flat
        keep = self.ring_mask.ravel() if part == "ring" else ~self.ring_mask.ravel()
        if part not in ("ring", "interior"):
            raise PredictError(f"part={part!r}: expected 'all', 'interior' or 'ring'")
        return flat[:, keep]

    def pad(self, field: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A (rows, cols) domain field in the padded frame, ``fill`` outside the domain."""
        out = np.full(self.padded_shape, fill, dtype=np.asarray(field).dtype)
        out[self.half:self.half + self.rows, self.half:self.half + self.cols] = field
        return out

    def unpad(self, padded: np.ndarray) -> np.ndarray:
        """The domain's cells of a padded-frame field (last two axes)."""
        return padded[..., self.half:self.half + self.rows, self.half:self.half + self.cols]

    def pad_terrain(self, terrain: np.ndarray, ratio: int) -> np.ndarray:
        """Terrain points ((rows * ratio + 1) x (cols * ratio + 1)) in the padded frame, the domain's edge
        points repeated outward (patches reaching outside the domain see level ground there)."""
        expected = (self.rows * ratio + 1, self.cols * ratio + 1)
        if terrain.shape != expected:
            raise PredictError(f"terrain has shape {terrain.shape}; a {self.rows} x {self.cols}-cell domain at "
                               f"{ratio} terrain points per cell needs {expected}")
        before = self.half * ratio
        after_rows = (self.padded_shape[0] - self.half - self.rows) * ratio
        after_cols = (self.padded_shape[1] - self.half - self.cols) * ratio
        return np.pad(terrain, ((before, after_rows), (before, after_cols)), mode="edge")
