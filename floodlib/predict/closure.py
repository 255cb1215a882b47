"""Full-domain prediction with a patch model: closure of the boundary rings for one step, and rollouts.

A patch model predicts the depth change of a 32-cell patch over one interval given the depth at n and
the depth at n + dt on the patch's 2-cell ring. Over a whole domain the ring at n + dt is unknown, so it
is found by iteration (:meth:`DomainPredictor.step`):

1. guess the depth at n + dt: the depth at n, with the domain's outer ring from the boundary condition;
2. one **pass**: predict every patch of one grid with its ring taken from the guess and write the patches'
   interiors into the guess, then the next grid, in the order :data:`PASS_ORDER` — the grids shifted half
   a patch down and across, the dual grid, and the standard grid last, so that the answer's cells come
   from patches inside the domain wherever the domain allows. Four grids, because where a ring line of
   the standard grid crosses one of the dual grid a 4 x 4 block lies on a ring of both: with those two
   alone it would never be predicted and would keep the first guess;
3. the pass's **residual** is the largest distance, on any cell that is some patch's ring, between the
   guess before the pass and what the grids predicted for it; stop when it is below ``tolerance_m``
   (default 1 mm) or after ``max_iterations`` passes. When a residual does not shrink, the iteration is
   oscillating through the rings: from then on each pass moves the guess only part of the way from where
   it started to where the pass took it (the weight halves each time, down to :data:`MIN_RELAXATION`), which
   leaves the fixed point where it was.

Depths never go negative (the interior is max(depth at n + change, 0)); cells outside the model's area
(NaN in the plan) are dry to the model and NaN in the answer; outer-ring cells with no prescribed depth
take the depth just inside them. A patch whose depth at n and ring are both dry (no cell above
``dry_depth_m``) is not sent to the model: nothing can flow into it without crossing its ring; nor is a
patch whose ring has moved by less than ``tolerance_m`` since it was last predicted in this step (its last
prediction stands).

Terrain features (the downsampler's output) are computed once per patch when the predictor is built and
reused for every pass and every step.

On a GPU a closure pass over a small domain is a few dozen small patch batches, and launching the network's
kernels one by one costs far more than running them. There the network's forward is captured once per batch
size in a CUDA graph (:class:`StaticBatches`; sizes are powers of two up to ``batch_size``, a batch padded to
the next one) and replayed: one launch per batch. The answer is the eager forward's.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from floodlib.models.constants import PATCH_CELLS, TERRAIN_POINTS
from floodlib.predict.boundary import Boundary
from floodlib.predict.tiling import GRID_SHIFTS, PredictError, Tiling

#: Grids in the order of one pass.
PASS_ORDER = ("rows", "cols", "dual", "standard")
RING_CELLS = 2
PRECISIONS = ("32", "bf16")
#: The damping never goes below this weight of a new prediction.
MIN_RELAXATION = 0.125


@dataclass
class StepResult:
    """One closed step n -> n + dt.

    ``depth`` (rows, cols) float32, m (NaN outside the model's area); ``residuals`` the largest ring change
    of each pass, m; ``iterations`` the index of the last pass (0: the first pass already changed no ring
    cell by ``tolerance_m`` or more); ``converged`` whether the last residual is below the tolerance;
    ``patches_predicted`` patch predictions made (dry patches skipped); ``seconds`` wall time;
    ``relaxation`` the weight of a new prediction at the end (below 1: the closure oscillated and was damped).
    """

    depth: np.ndarray
    residuals: list[float]
    converged: bool
    patches_predicted: int
    seconds: float
    relaxation: float = 1.0

    @property
    def iterations(self) -> int:
        return len(self.residuals) - 1


@dataclass
class Rollout:
    """Repeated steps: ``depths`` (steps + 1, rows, cols) at ``times_s`` (the start first), and each step's result."""

    depths: np.ndarray
    times_s: np.ndarray
    steps: list[StepResult] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(step.seconds for step in self.steps))


class StaticBatches:
    """``model.predict_change`` on batches of fixed sizes — the powers of two up to ``batch_size``, and
    ``batch_size`` — whose inputs are copied into buffers of that size (the rows past the batch keep whatever
    they held, and their outputs are dropped). With ``graphs`` (CUDA only) each size's forward is captured in
    a CUDA graph the first time it is needed and replayed from then on: a batch costs one launch instead of one
    per kernel. Without, the padded buffers go through the eager forward (what a CPU runs, and what the tests
    compare with the plain forward).

    The tensor returned by a call is a view of the size's output buffer, valid until the next call."""

    def __init__(self, model, *, device: torch.device, batch_size: int, precision: str, graphs: bool):
        if graphs and device.type != "cuda":
            raise PredictError(f"CUDA graphs need a CUDA device, not {str(device)!r}")
        self.model, self.device, self.precision, self.graphs = model, device, precision, graphs
        sizes, size = {batch_size}, 1
        while size < batch_size:
            sizes.add(size)
            size *= 2
        self.sizes = tuple(sorted(sizes))
        self._slots: dict[int, tuple] = {}

    def size_for(self, n: int) -> int:
        """The smallest batch size that holds ``n`` patches."""
        return next(size for size in self.sizes if size >= n)

    def prepare(self, n: int) -> None:
        """Make (on CUDA: capture) every size a batch of up to ``n`` patches can need."""
        for size in self.sizes:
            self._slot(size)
            if size >= n:
                break

    def _forward(self, features: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        # Autocast's cache of cast weights must be off while a graph is captured (it would hold tensors made
        # outside the graph's memory); without a graph it changes nothing but a cast per call.
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
                    if self.precision == "bf16" else nullcontext())
        with autocast:
            return self.model.predict_change(features, depths)

    def _slot(self, size: int) -> tuple:
        if size not in self._slots:
            features = torch.zeros((size, 1, PATCH_CELLS, PATCH_CELLS), device=self.device)
            depths = torch.zeros((size, 2, PATCH_CELLS, PATCH_CELLS), device=self.device)
            graph = output = None
            if self.graphs:
                # Warm-up on a side stream (kernels chosen, workspaces allocated), then the capture.
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self._forward(features, depths)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    output = self._forward(features, depths)
            self._slots[size] = (features, depths, graph, output)
        return self._slots[size]

    def __call__(self, features: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        n = len(features)
        static_features, static_depths, graph, output = self._slot(self.size_for(n))
        static_features[:n].copy_(features)
        static_depths[:n].copy_(depths)
        if graph is None:
            output = self._forward(static_features, static_depths)
        else:
            graph.replay()
        return output[:n]


def _check_model(model) -> None:
    if not (hasattr(model, "terrain_features") and hasattr(model, "predict_change")):
        raise PredictError(f"{type(model).__name__} cannot predict a domain: it needs terrain_features(terrain) and "
                           "predict_change(features, depths), as floodlib's FloodModel has")


class DomainPredictor:
    """Predicts a whole domain with a patch model.

    Parameters
    ----------
    model : a :class:`floodlib.models.FloodModel` (or anything with ``terrain_features`` and
        ``predict_change``) for 32-cell patches with 321 terrain points per side.
    terrain : (rows * r + 1, cols * r + 1) elevation, m, r = ``terrain_ratio`` (10: 10 m cells, 1 m terrain).
    mask : (rows, cols) bool, True on cells outside the model's area (optional).
    device : where the model runs ("cpu", "cuda", ...).
    precision : "32" or "bf16" (autocast of the network body; the terrain path stays float32).
    tolerance_m, max_iterations : the closure's stopping rule.
    batch_size : patches per forward call.
    dry_depth_m : a patch with no cell deeper than this at n nor on its ring is predicted unchanged.
    static_batches : run the network on padded batches of fixed sizes (:class:`StaticBatches`), replayed from
        CUDA graphs on a GPU. Default: on CUDA for floodlib's models, off on a CPU (where padding only adds
        work) and for other models (which may not be capturable).
    """

    def __init__(self, model, terrain: np.ndarray, *, mask: np.ndarray | None = None, terrain_ratio: int = 10,
                 device: str | torch.device = "cpu", precision: str = "32", tolerance_m: float = 1e-3,
                 max_iterations: int = 20, batch_size: int = 64, dry_depth_m: float = 1e-3,
                 pass_order: tuple[str, ...] = PASS_ORDER, relaxation: float = 1.0,
                 static_batches: bool | None = None):
        _check_model(model)
        if precision not in PRECISIONS:
            raise PredictError(f"precision={precision!r}: expected one of {PRECISIONS}")
        if not (tolerance_m > 0 and max_iterations >= 1 and batch_size >= 1):
            raise PredictError(f"tolerance_m={tolerance_m!r} must be > 0, max_iterations={max_iterations!r} and "
                               f"batch_size={batch_size!r} >= 1")
        if terrain_ratio * PATCH_CELLS + 1 != TERRAIN_POINTS:
            raise PredictError(f"terrain_ratio={terrain_ratio}: the models take {TERRAIN_POINTS} terrain points per "
                               f"{PATCH_CELLS}-cell patch, i.e. {(TERRAIN_POINTS - 1) // PATCH_CELLS} points per cell")
        terrain = np.asarray(terrain, dtype=np.float32)
        if terrain.ndim != 2 or (terrain.shape[0] - 1) % terrain_ratio or (terrain.shape[1] - 1) % terrain_ratio:
            raise PredictError(f"terrain has shape {terrain.shape}: expected (rows * {terrain_ratio} + 1, "
                               f"cols * {terrain_ratio} + 1) points")
        if not np.isfinite(terrain).all():
            raise PredictError("terrain holds NaN or infinite points; it must be finite over the whole domain")
        rows, cols = (terrain.shape[0] - 1) // terrain_ratio, (terrain.shape[1] - 1) // terrain_ratio
        self.tiling = Tiling(rows, cols, PATCH_CELLS, RING_CELLS)
        self.model = model
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise PredictError(f"device {str(device)!r}: this torch {torch.__version__} sees no CUDA device; use 'cpu'")
        self.precision = precision
        self.tolerance_m = float(tolerance_m)
        self.max_iterations = int(max_iterations)
        self.batch_size = int(batch_size)
        self.dry_depth_m = float(dry_depth_m)
        unknown = [grid for grid in pass_order if grid not in GRID_SHIFTS]
        if unknown or not pass_order:
            raise PredictError(f"pass_order={pass_order!r}: expected grids among {tuple(GRID_SHIFTS)}")
        self.pass_order = tuple(pass_order)
        if not 0 < relaxation <= 1:
            raise PredictError(f"relaxation={relaxation!r}: expected a number in (0, 1] (1: take each prediction whole)")
        self.relaxation = float(relaxation)
        mask = np.zeros((rows, cols), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (rows, cols):
            raise PredictError(f"mask has shape {mask.shape}, expected the domain's {(rows, cols)}")
        self.mask = mask
        t = self.tiling
        inside = t.pad(~mask, fill=False)
        self._inside = torch.as_tensor(inside.ravel(), device=self.device)
        ring = t.pad(np.pad(np.zeros((rows - 2 * RING_CELLS, cols - 2 * RING_CELLS), dtype=bool), RING_CELLS,
                            constant_values=True), fill=False)
        self._outer_ring = ring.ravel() & inside.ravel()
        some_ring = np.zeros(t.padded_shape[0] * t.padded_shape[1], dtype=bool)
        for grid in self.pass_order:
            some_ring[t.cells(grid, part="ring").ravel()] = True
        self._some_ring = some_ring & inside.ravel()
        self._cells = {grid: torch.as_tensor(t.cells(grid), device=self.device) for grid in self.pass_order}
        self._interior = {grid: torch.as_tensor(t.cells(grid, part="interior"), device=self.device)
                          for grid in self.pass_order}
        self._ring_in_patch = torch.as_tensor(t.ring_mask, device=self.device)
        self.cell_elevation = terrain[:-1, :-1].reshape(rows, terrain_ratio, cols, terrain_ratio).mean(axis=(1, 3))
        started = time.perf_counter()
        self._features = self._terrain_features(t.pad_terrain(terrain, terrain_ratio), terrain_ratio)
        if static_batches is None:
            from floodlib.models.base import FloodModel

            static_batches = self.device.type == "cuda" and isinstance(model, FloodModel)
        self._batches = None
        if static_batches:
            self._batches = StaticBatches(model, device=self.device, batch_size=self.batch_size, precision=precision,
                                          graphs=self.device.type == "cuda")
            # Every size a pass can need, captured now: set-up, like the terrain features, not a step's time.
            self._batches.prepare(max(len(cells) for cells in self._cells.values()))
        self.feature_seconds = time.perf_counter() - started

    @property
    def shape(self) -> tuple[int, int]:
        return self.tiling.rows, self.tiling.cols

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.no_grad()
    def _terrain_features(self, padded_terrain: np.ndarray, ratio: int) -> dict[str, torch.Tensor]:
        self.model.eval()
        features = {}
        points = TERRAIN_POINTS
        for grid in self.pass_order:
            origins = self.tiling.origins(grid)
            chunks = []
            for start in range(0, len(origins), self.batch_size):
                batch = np.stack([padded_terrain[r * ratio:r * ratio + points, c * ratio:c * ratio + points]
                                  for r, c in origins[start:start + self.batch_size]])[:, None]
                out = self.model.terrain_features(torch.as_tensor(batch, device=self.device))
                expected = (len(batch), 1, PATCH_CELLS, PATCH_CELLS)
                if tuple(out.shape) != expected:
                    raise PredictError(f"the model's terrain features have shape {tuple(out.shape)} for "
                                       f"{points} x {points} terrain points; full-domain prediction tiles "
                                       f"{PATCH_CELLS}-cell patches and needs {expected}")
                chunks.append(out.float())
            features[grid] = torch.cat(chunks)
        return features

    def _padded(self, domain: np.ndarray, what: str) -> torch.Tensor:
        domain = np.asarray(domain, dtype=np.float32)
        if domain.shape != self.shape:
            raise PredictError(f"{what} has shape {domain.shape}, expected the domain's {self.shape}")
        values = np.where(self.mask, 0.0, domain)
        if not np.isfinite(values).all() or (values < 0).any():
            bad = np.argwhere(~np.isfinite(values) | (values < 0))[0]
            raise PredictError(f"{what}: cell (row {bad[0]}, col {bad[1]}) holds {domain[tuple(bad)]}; depths must be "
                               "finite and >= 0 m inside the model's area")
        return torch.as_tensor(self.tiling.pad(values.astype(np.float32)).ravel(), device=self.device)

    def _free_cells(self, prescribed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Outer-ring cells with no prescribed depth and the cells just inside them they copy (zero gradient)."""
        rows, cols = self.shape
        free = np.zeros((rows, cols), dtype=bool)
        free[self.tiling.unpad(self._outer_ring.reshape(self.tiling.padded_shape))] = True
        free &= ~prescribed
        r, c = np.nonzero(free)
        src_r = np.clip(r, RING_CELLS, rows - 1 - RING_CELLS)
        src_c = np.clip(c, RING_CELLS, cols - 1 - RING_CELLS)
        width = self.tiling.padded_shape[1]
        h = self.tiling.half
        to_flat = lambda rr, cc: torch.as_tensor((rr + h) * width + cc + h, device=self.device)
        return to_flat(r, c), to_flat(src_r, src_c)

    @torch.no_grad()
    def step(self, depth_now: np.ndarray, boundary_next: np.ndarray, *, guess: np.ndarray | None = None) -> StepResult:
        """Close one step: the depth at n + dt from ``depth_now`` (rows, cols, m) and ``boundary_next`` (the
        outer ring's depth at n + dt, NaN where free; see :mod:`floodlib.predict.boundary`).

        ``guess``: the first guess of the depth at n + dt (default: ``depth_now``).
        """
        started = time.perf_counter()
        boundary_next = np.asarray(boundary_next, dtype=np.float32)
        if boundary_next.shape != self.shape:
            raise PredictError(f"boundary has shape {boundary_next.shape}, expected the domain's {self.shape}")
        now = self._padded(depth_now, "depth at n")
        state = self._padded(depth_now if guess is None else guess, "guess of the depth at n + dt").clone()
        outer = self.tiling.unpad(self._outer_ring.reshape(self.tiling.padded_shape))
        prescribed = outer & np.isfinite(boundary_next) & ~self.mask
        bad = prescribed & ~(boundary_next >= 0)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise PredictError(f"boundary: cell (row {r}, col {c}) holds {boundary_next[r, c]}; depths must be >= 0 m")
        fixed = self.tiling.pad(prescribed, fill=False).ravel()
        fixed_index = torch.as_tensor(np.flatnonzero(fixed), device=self.device)
        state[fixed_index] = torch.as_tensor(self.tiling.pad(np.where(prescribed, boundary_next, 0)).ravel()[fixed],
                                             device=self.device)
        free, free_source = self._free_cells(prescribed)
        state[free] = state[free_source]
        writable = self._inside & ~torch.as_tensor(fixed, device=self.device)
        watched = torch.as_tensor(np.flatnonzero(self._some_ring & ~fixed), device=self.device)
        # Where each grid's interiors may write (not outside the area, not on prescribed cells): the same for
        # every pass of this step, so found once (on a GPU each boolean selection waits for the device).
        targets = {}
        for grid in self.pass_order:
            keep = torch.nonzero(writable[self._interior[grid]].flatten()).flatten()
            targets[grid] = (self._interior[grid].flatten()[keep], keep)
        residuals, predicted, memory = [], 0, {}
        weight = self.relaxation
        for _ in range(self.max_iterations):
            previous = state.clone()
            finite = {}
            for grid in self.pass_order:
                count, finite[grid] = self._update(grid, now, state, targets[grid], memory)
                predicted += count
                state[free] = state[free_source]
            if not bool(torch.stack(list(finite.values())).all()):
                grid = next(grid for grid, ok in finite.items() if not bool(ok))
                raise PredictError(f"the model predicted non-finite depth changes on the {grid} grid; its weights or "
                                   "inputs are broken")
            # how far the pass moved the ring cells: the distance between the guess and what the grids predict
            residual = float((state[watched] - previous[watched]).abs().max()) if len(watched) else 0.0
            if residuals and residual >= residuals[-1]:  # not shrinking: an oscillation through the rings; damp it
                weight = max(weight / 2, MIN_RELAXATION)
            if weight < 1:  # the damped pass: part of the way from the guess to the pass's answer
                state.copy_(previous + weight * (state - previous))
            residuals.append(residual)
            if residual < self.tolerance_m:
                break
        depth = self.tiling.unpad(state.reshape(self.tiling.padded_shape).cpu().numpy()).copy()
        depth[self.mask] = np.nan
        return StepResult(depth=depth, residuals=residuals, converged=residuals[-1] < self.tolerance_m,
                          patches_predicted=predicted, seconds=time.perf_counter() - started,
                          relaxation=weight)

    def _update(self, grid: str, now: torch.Tensor, state: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor],
                memory: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, torch.Tensor]:
        """Predict ``grid``'s patches and write their interiors into ``state`` at ``target`` (the cells of
        ``state`` and the places in the grid's flattened interiors they take); returns how many patches the
        model saw and whether all its predictions were finite (a tensor, read once per pass).

        ``memory[grid]`` holds the rings each patch was last predicted with and the result, within one step:
        a patch whose ring has not moved by ``tolerance_m`` since is not predicted again, its last interior is
        written back (another grid may have overwritten it since)."""
        cells = self._cells[grid]
        size = (len(cells), PATCH_CELLS, PATCH_CELLS)
        depth_now = now[cells].reshape(size)
        ring = torch.where(self._ring_in_patch, state[cells].reshape(size), 0.0)
        wet = ((depth_now > self.dry_depth_m) | (ring > self.dry_depth_m)).flatten(1).any(dim=1)
        if grid in memory:
            last_ring, new = memory[grid]
            moved = (ring - last_ring).abs().flatten(1).amax(dim=1) >= self.tolerance_m
            new = torch.where((~wet)[:, None, None], depth_now, new)
        else:
            last_ring, new, moved = ring.clone(), depth_now.clone(), torch.ones_like(wet)
        active = torch.nonzero(wet & moved).flatten()
        last_ring[active] = ring[active]
        memory[grid] = (last_ring, new)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for start in range(0, len(active), self.batch_size):
            chosen = active[start:start + self.batch_size]
            depths = torch.stack([ring[chosen], depth_now[chosen]], dim=1)
            if self._batches is not None:
                change = self._batches(self._features[grid][chosen], depths)
            else:
                with self._autocast():
                    change = self.model.predict_change(self._features[grid][chosen], depths)
            if tuple(change.shape) != (len(chosen), 1, PATCH_CELLS, PATCH_CELLS):
                raise PredictError(f"the model predicted shape {tuple(change.shape)} for {len(chosen)} patches; "
                                   f"expected {(len(chosen), 1, PATCH_CELLS, PATCH_CELLS)}")
            change = change[:, 0].float()
            finite &= torch.isfinite(change).all()
            new[chosen] = torch.clamp(depth_now[chosen] + change, min=0.0)
        cells_at, taken = target
        state[cells_at] = new[:, RING_CELLS:-RING_CELLS, RING_CELLS:-RING_CELLS].flatten()[taken]
        return len(active), finite

    def rollout(self, depth_start: np.ndarray, boundary: Boundary, *, start_s: float, steps: int,
                delta_t_s: float = 3600.0, progress=None) -> Rollout:
        """``steps`` closed steps of ``delta_t_s`` from ``depth_start`` at ``start_s``, each step's prediction
        feeding the next; ``boundary.at(t)`` gives the outer ring at each step's end time.

        ``progress``: an optional callable(step_index, StepResult) called after each step.
        """
        if steps < 1:
            raise PredictError(f"steps={steps!r}: a rollout needs at least one step")
        depths = [np.asarray(depth_start, dtype=np.float32).copy()]
        depths[0][self.mask] = np.nan
        results = []
        for k in range(steps):
            boundary_next = boundary.at(start_s + (k + 1) * delta_t_s)
            result = self.step(depths[-1], boundary_next)
            results.append(result)
            depths.append(result.depth)
            if progress is not None:
                progress(k, result)
        times = start_s + delta_t_s * np.arange(steps + 1)
        return Rollout(depths=np.stack(depths), times_s=times, steps=results)
