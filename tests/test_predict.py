"""Full-domain prediction: tiling, ring closure, rollouts, boundaries and the ``python -m floodlib.predict`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from floodlib.data.store import Simulation, read_simulation, write_simulation
from floodlib.models import create_model, load_model, save_model
from floodlib.predict import (PASS_ORDER, DomainPredictor, EdgeBoundary, EdgeSegment, PredictError, StoredBoundary,
                              Tiling, predict_plan, read_boundary)

ROOT = Path(__file__).resolve().parents[1]


# -- tiling ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, cols", [(32, 32), (64, 96), (96, 96), (100, 45), (33, 70)])
def test_each_grid_covers_every_domain_cell_exactly_once(rows, cols):
    tiling = Tiling(rows, cols)
    inside = tiling.pad(np.ones((rows, cols), dtype=bool), fill=False).ravel()
    for grid in ("standard", "dual"):
        counts = np.bincount(tiling.cells(grid).ravel(), minlength=inside.size)
        assert (counts[inside] == 1).all(), grid
        assert counts.max() == 1  # patches of one grid never overlap, outside the domain either
        # interior and ring split each patch
        assert tiling.cells(grid, part="interior").shape[1] + tiling.cells(grid, part="ring").shape[1] == 32 * 32
    # the standard grid starts at the domain's first cell, the dual grid half a patch before it
    assert tuple(tiling.domain_origins("standard")[0]) == (0, 0)
    assert tuple(tiling.domain_origins("dual")[0]) == (-16, -16)


def interior_of(tiling, grids):
    interior = np.zeros(tiling.padded_shape[0] * tiling.padded_shape[1], dtype=bool)
    for grid in grids:
        interior[tiling.cells(grid, part="interior").ravel()] = True
    return interior


@pytest.mark.parametrize("rows, cols", [(64, 64), (96, 128), (100, 45)])
def test_every_ring_cell_of_one_grid_lies_inside_a_patch_of_another(rows, cols):
    tiling = Tiling(rows, cols)
    inside = tiling.pad(np.ones((rows, cols), dtype=bool), fill=False).ravel()
    for grid in PASS_ORDER:
        ring = np.unique(tiling.cells(grid, part="ring").ravel())
        ring = ring[inside[ring]]
        assert interior_of(tiling, [other for other in PASS_ORDER if other != grid])[ring].all(), grid


def test_the_standard_and_dual_grids_alone_leave_the_crossings_of_their_rings_on_rings():
    """Where a standard ring line crosses a dual one, a 4 x 4 block that neither grid's interior reaches: with
    those two grids alone, those cells would keep the first guess forever."""
    tiling = Tiling(96, 96)
    never = ~interior_of(tiling, ["standard", "dual"]).reshape(tiling.padded_shape)
    never = tiling.unpad(never)[2:-2, 2:-2]  # the outer ring is the boundary condition
    # inside the outer ring: standard ring lines at 30-33 and 62-65, dual ones at 14-17, 46-49 and 78-81
    standard, dual = {30, 31, 32, 33, 62, 63, 64, 65}, {14, 15, 16, 17, 46, 47, 48, 49, 78, 79, 80, 81}
    expected = {(r, c) for r in range(2, 94) for c in range(2, 94)
                if (r in standard and c in dual) or (r in dual and c in standard)}
    assert {(r + 2, c + 2) for r, c in zip(*np.nonzero(never))} == expected and len(expected) == 12 * 16
    assert not (~interior_of(tiling, PASS_ORDER).reshape(tiling.padded_shape))[18:-18, 18:-18].any()


def test_a_domain_smaller_than_a_patch_is_refused():
    with pytest.raises(PredictError, match="20 rows: full-domain prediction needs at least one whole 32-cell patch"):
        Tiling(20, 64)


# -- a model that knows the answer ----------------------------------------------------------------------------

class Oracle(nn.Module):
    """Returns the true depth change of whichever patch it is given, found by the depth at n of the patch's
    first wet cell (the test fields hold no value twice and no dry cell); terrain features are unused."""

    def __init__(self, now: np.ndarray, later: np.ndarray):
        super().__init__()
        rows, cols = now.shape
        self.now = np.pad(now, 16)
        self.change = np.pad(later - now, 16)
        self.where = {float(v): (r, c) for (r, c), v in np.ndenumerate(now)}
        self.calls = 0

    def terrain_features(self, terrain):
        return torch.zeros(terrain.shape[0], 1, 32, 32)

    def predict_change(self, features, depths):
        self.calls += len(depths)
        out = torch.zeros(len(depths), 1, 32, 32)
        for k, patch in enumerate(depths[:, 1].numpy()):
            i, j = np.argwhere(patch > 0)[0]
            r, c = self.where[float(patch[i, j])]
            r, c = r - i + 16, c - j + 16  # the patch's origin in the padded arrays
            out[k, 0] = torch.from_numpy(self.change[r:r + 32, c:c + 32])
        return out


def dyadic_flood(rows=96, cols=96, seed=0):
    """Depths at n and n + dt on multiples of 1/1024 m (every sum and difference exact in float32), all
    values at n distinct and positive, with a terrain to match."""
    rng = np.random.default_rng(seed)
    now = (rng.permutation(rows * cols).reshape(rows, cols) + 1).astype(np.float32) / 1024
    later = np.maximum(now + rng.integers(-512, 2048, size=(rows, cols)).astype(np.float32) / 1024, 0)
    terrain = rng.normal(size=(rows * 10 + 1, cols * 10 + 1)).astype(np.float32)
    return now, later.astype(np.float32), terrain


def outer_ring_of(field):
    out = np.full(field.shape, np.nan, dtype=np.float32)
    out[:2], out[-2:], out[:, :2], out[:, -2:] = field[:2], field[-2:], field[:, :2], field[:, -2:]
    return out


def test_closure_from_the_true_depth_stops_at_iteration_0_and_reproduces_it_exactly():
    now, later, terrain = dyadic_flood()
    predictor = DomainPredictor(Oracle(now, later), terrain)
    result = predictor.step(now, outer_ring_of(later), guess=later)
    assert result.iterations == 0 and result.residuals == [0.0] and result.converged
    np.testing.assert_array_equal(result.depth, later)


def test_closure_from_the_depth_at_n_reaches_the_true_depth_in_one_more_pass():
    now, later, terrain = dyadic_flood(64, 96, seed=1)
    predictor = DomainPredictor(Oracle(now, later), terrain)
    result = predictor.step(now, outer_ring_of(later))
    assert result.iterations == 1 and result.residuals[1] == 0.0
    # the residual watches the cells that are some patch's ring (rows or columns 0, 1, 14, 15 modulo 16)
    r, c = np.mgrid[0:64, 0:96]
    ring = np.isin(r % 16, [0, 1, 14, 15]) | np.isin(c % 16, [0, 1, 14, 15])
    ring[:2], ring[-2:], ring[:, :2], ring[:, -2:] = False, False, False, False  # the boundary condition
    assert result.residuals[0] == float(np.abs(later - now)[ring].max())
    np.testing.assert_array_equal(result.depth, later)
    # every patch of every grid is predicted in the first pass (none is dry), then only those whose ring moved
    # since: not the standard grid's, whose rings were already the answer when it went last
    tiling = Tiling(64, 96)
    count = {grid: len(tiling.origins(grid)) for grid in PASS_ORDER}
    assert sum(count.values()) < result.patches_predicted <= 2 * sum(count.values()) - count["standard"]


def test_a_rollout_over_a_stored_plan_with_the_oracle_reproduces_the_solver():
    # three frames whose values differ between frames as well as within them
    frames = [dyadic_flood(64, 64, seed=s)[0] + 4 * k for k, s in enumerate((2, 3, 4))]
    terrain = dyadic_flood(64, 64)[2]
    plan = Simulation(project="p", plan="q", terrain=terrain, water_depth=np.stack(frames), cell_size_m=10.0,
                      terrain_spacing_m=1.0, output_interval_s=1800.0, source="test")

    class Chain(nn.Module):  # the oracle of whichever step the patch's depth at n belongs to
        def __init__(self):
            super().__init__()
            self.steps = [Oracle(frames[0], frames[1]), Oracle(frames[1], frames[2])]

        def terrain_features(self, terrain):
            return torch.zeros(terrain.shape[0], 1, 32, 32)

        def predict_change(self, features, depths):
            patch = depths[0, 1].numpy()
            value = float(patch[tuple(np.argwhere(patch > 0)[0])])
            step = self.steps[0] if value in self.steps[0].where else self.steps[1]
            return step.predict_change(features, depths)

    rollout = predict_plan(Chain(), plan, start_s=0.0, steps=2, delta_t_s=1800.0)
    np.testing.assert_array_equal(rollout.depths, np.stack(frames))
    np.testing.assert_array_equal(rollout.times_s, [0.0, 1800.0, 3600.0])
    assert [step.converged for step in rollout.steps] == [True, True]


class RingAverse(nn.Module):
    """Predicts each patch's interior as max(0, 1 - 4 x the mean depth on its ring): the more water around
    a patch, the less in it, so an undamped closure swings back and forth."""

    def terrain_features(self, terrain):
        return torch.zeros(terrain.shape[0], 1, 32, 32)

    def predict_change(self, features, depths):
        mean = depths[:, 0].sum(dim=(1, 2)) / (32 * 32 - 28 * 28)
        return (torch.clamp(1 - 4 * mean, min=0)[:, None, None] - depths[:, 1])[:, None]


def test_an_oscillating_closure_is_damped_until_it_reaches_a_fixed_point():
    terrain = np.zeros((961, 961), dtype=np.float32)
    now = np.full((96, 96), 0.2, dtype=np.float32)
    ring = outer_ring_of(np.full((96, 96), 0.2, dtype=np.float32))
    predictor = DomainPredictor(RingAverse(), terrain, max_iterations=40, pass_order=("dual", "standard"))
    result = predictor.step(now, ring)
    assert result.residuals[1] > result.residuals[0]  # the second pass moved the rings more than the first
    assert result.relaxation < 1 and result.converged
    # the answer is a fixed point: one more pass from it moves no ring cell by the tolerance
    again = predictor.step(now, ring, guess=result.depth)
    assert again.iterations == 0 and again.residuals[0] < 1e-3


# -- real models ----------------------------------------------------------------------------------------------

def valley_like(rows=64, cols=64, seed=0):
    """A sloping valley terrain and a flood in its channel: depth at n and the plan's edges at n + dt."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows * 10 + 1, 0:cols * 10 + 1]
    terrain = (0.002 * x + 0.01 * np.abs(y - rows * 5) + rng.normal(0, 0.05, size=x.shape)).astype(np.float32)
    now = np.zeros((rows, cols), dtype=np.float32)
    now[rows // 2 - 4:rows // 2 + 4, :cols // 2] = 0.8
    later = now.copy()
    later[rows // 2 - 5:rows // 2 + 5, :cols - 8] = 1.0
    return terrain, now, later


@pytest.mark.parametrize("arch", ["Arch_02", "Arch_04"])
def test_an_untrained_model_terminates_with_finite_non_negative_depths(arch):
    torch.manual_seed(0)
    terrain, now, later = valley_like()
    model = create_model(arch, downsampler="cubic")
    predictor = DomainPredictor(model, terrain, max_iterations=5)
    result = predictor.step(now, outer_ring_of(later))
    assert 1 <= len(result.residuals) <= 5
    assert np.isfinite(result.depth).all() and (result.depth >= 0).all()
    assert result.converged == (result.residuals[-1] < 1e-3)
    # the prescribed outer ring is the boundary condition, kept exactly
    ring = np.isfinite(outer_ring_of(later))
    np.testing.assert_array_equal(result.depth[ring], later[ring])


def test_bf16_autocast_gives_nearly_the_float32_answer_on_cpu():
    torch.manual_seed(1)
    terrain, now, later = valley_like()
    model = create_model("Arch_02", downsampler="cubic")
    exact = DomainPredictor(model, terrain, max_iterations=3).step(now, outer_ring_of(later))
    brain = DomainPredictor(model, terrain, max_iterations=3, precision="bf16").step(now, outer_ring_of(later))
    assert np.isfinite(brain.depth).all() and (brain.depth >= 0).all()
    assert np.abs(brain.depth - exact.depth).max() < 0.05


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_static_padded_batches_give_the_plain_forward_answer(precision):
    """The batches a GPU replays from CUDA graphs, run eagerly: patches copied into buffers of a power-of-two
    size (here up to 8, so a grid of 9 to 16 patches takes a full batch and a padded one) give the same depths,
    residuals and patch counts as the plain forward."""
    from floodlib.predict.closure import StaticBatches

    torch.manual_seed(2)
    terrain, now, later = valley_like()
    model = create_model("Arch_04", downsampler="cubic")
    results = [DomainPredictor(model, terrain, max_iterations=4, batch_size=8, precision=precision,
                               static_batches=static).step(now, outer_ring_of(later)) for static in (False, True)]
    plain, static = results
    assert static.patches_predicted == plain.patches_predicted > 8
    np.testing.assert_allclose(static.residuals, plain.residuals, atol=1e-5)
    np.testing.assert_allclose(static.depth, plain.depth, atol=1e-5)
    batches = StaticBatches(model, device=torch.device("cpu"), batch_size=12, precision="32", graphs=False)
    assert batches.sizes == (1, 2, 4, 8, 12) and [batches.size_for(n) for n in (1, 3, 8, 9, 12)] == [1, 4, 8, 12, 12]
    with pytest.raises(PredictError, match="CUDA graphs need a CUDA device, not 'cpu'"):
        StaticBatches(model, device=torch.device("cpu"), batch_size=8, precision="32", graphs=True)


def test_cells_outside_the_area_stay_nan_and_are_dry_to_the_model():
    now, later, terrain = dyadic_flood(64, 64, seed=5)
    mask = np.zeros(now.shape, dtype=bool)
    mask[40:, 50:] = True
    oracle = Oracle(now, later)
    predictor = DomainPredictor(oracle, terrain, mask=mask)
    seen = []
    original = oracle.predict_change
    oracle.predict_change = lambda f, d: (seen.append(d[:, 1].clone()), original(f, d))[1]
    result = predictor.step(np.where(mask, np.nan, now), outer_ring_of(later))
    assert np.isnan(result.depth[mask]).all()
    np.testing.assert_array_equal(result.depth[~mask], later[~mask])
    # the model never sees NaN: masked cells reach it as dry (0 m)
    assert all(torch.isfinite(d).all() for d in seen)
    assert any((d == 0).any() for d in seen)


def test_dry_patches_are_not_sent_to_the_model():
    terrain, now, later = valley_like(96, 96)
    now[:], later[:] = 0, 0
    now[40:50, 10:20] = 0.5
    later[40:50, 10:24] = 0.5
    calls = []
    model = create_model("Arch_02", downsampler="cubic")
    original = model.predict_change
    model.predict_change = lambda f, d: (calls.append(len(d)), original(f, d))[1]
    # one pass of the dual and the standard grid: the dual's rings are the guess, the standard's the dual's interiors
    result = DomainPredictor(model, terrain, max_iterations=1, pass_order=("dual", "standard")).step(
        now, outer_ring_of(later))
    assert result.patches_predicted == sum(calls)
    assert 0 < result.patches_predicted < 9 + 16  # only patches near the water
    assert (result.depth[:, 64:] == 0).all()  # no wet patch reaches beyond column 61 in one pass


def test_free_edge_cells_follow_the_depth_inside_them():
    now, later, terrain = dyadic_flood(64, 64, seed=6)
    boundary = EdgeBoundary([EdgeSegment(edge="west", from_cell=10, to_cell=20, times_min=[0, 60], depth_m=[0.5, 1.5])],
                            rows=64, cols=64)
    ring = boundary.at(1800.0)
    assert np.all(ring[10:20, :2] == 1.0) and np.isnan(ring[:10, :2]).all() and np.isnan(ring[2:-2, 2:-2]).all()
    result = DomainPredictor(Oracle(now, later), terrain).step(now, ring)
    np.testing.assert_array_equal(result.depth[10:20, :2], 1.0)
    np.testing.assert_array_equal(result.depth[30, :2], [result.depth[30, 2]] * 2)  # zero gradient across the edge
    np.testing.assert_array_equal(result.depth[:2, 30], [result.depth[2, 30]] * 2)
    assert result.depth[0, 0] == result.depth[2, 2]  # a corner follows the cell diagonally inside it


# -- boundaries -----------------------------------------------------------------------------------------------

def test_a_discharge_becomes_the_manning_normal_depth_of_the_segment():
    segment = EdgeSegment(edge="north", from_cell=0, to_cell=4, times_min=[0, 60], discharge_m3s=[0, 20],
                          manning_n=0.04, slope=0.001)
    boundary = EdgeBoundary([segment], rows=32, cols=32)
    q = 10.0 / 40.0  # m³/s per metre of the 40 m segment at 30 min
    expected = (q * 0.04 / np.sqrt(0.001)) ** 0.6
    assert boundary.at(1800.0)[0, 0] == pytest.approx(expected, rel=1e-6)
    # a slope measured from the terrain when none is given: 0.5 m fall over 10 cells of 10 m
    z = np.tile(np.linspace(0, 3.1, 32)[:, None], (1, 32)) * -1 + 10
    measured = EdgeBoundary([segment.model_copy(update={"slope": None})], rows=32, cols=32, cell_elevation=z)
    slope = (z[0, 0] - z[10, 0]) / 100
    assert measured.at(3600.0)[1, 3] == pytest.approx((0.5 * 0.04 / np.sqrt(slope)) ** 0.6, rel=1e-5)


def test_a_stored_boundary_is_linear_between_frames_and_refuses_times_outside_the_plan():
    frames = np.stack([np.zeros((32, 32)), np.ones((32, 32)) * 2]).astype(np.float32)
    plan = Simulation(project="p", plan="q", terrain=np.zeros((321, 321), np.float32), water_depth=frames,
                      cell_size_m=10.0, terrain_spacing_m=1.0, output_interval_s=600.0, source="test")
    boundary = StoredBoundary(plan)
    ring = boundary.at(150.0)
    assert ring[0, 5] == pytest.approx(0.5) and np.isnan(ring[5, 5])
    with pytest.raises(PredictError, match=r"plan p/q: time 11 min is outside the plan, whose outputs run from 0 to 10 min"):
        boundary.at(660.0)


@pytest.mark.parametrize("content, message", [
    ({"segments": [{"edge": "up", "times_min": [0], "depth_m": [1]}]}, r"segments\.0\.edge: Input should be 'north'"),
    ({"segments": [{"edge": "west", "times_min": [0, 60], "depth_m": [1]}]}, "depth_m has 1 values but times_min 2"),
    ({"segments": [{"edge": "west", "times_min": [0], "depth_m": [1], "discharge_m3s": [3]}]},
     "exactly one of depth_m and discharge_m3s"),
    ({"segments": [{"edge": "west", "times_min": [60, 0], "depth_m": [1, 2]}]}, "must be finite and increasing"),
    ({"segments": [{"edge": "west", "times_min": [0], "depth_m": [-1]}]}, "must be finite and >= 0"),
    ({"segments": [{"edge": "west", "to_cell": 99, "times_min": [0], "depth_m": [1]}]},
     r"segments\[0\]\.to_cell=99: the west edge has 64 cells"),
    ({"segments": [{"edge": "west", "from_cell": 64, "times_min": [0], "depth_m": [1]}]},
     r"segments\[0\]\.from_cell=64: the west edge has 64 cells \(0 to 63\); the segment would set none"),
    ({"segment": []}, "segments: Field required"),
    ({"segments": [{"edge": "west", "times_min": [0], "depth_m": [0.3]},
                   {"edge": "north", "times_min": [0], "depth_m": [0.1]},  # corners: shared by two edges, allowed
                   {"edge": "west", "from_cell": 10, "to_cell": 20, "times_min": [0], "depth_m": [1]}]},
     r"segments\[0\] and segments\[2\] both set west edge cells 10 to 19; a cell takes one series"),
])
def test_a_bad_boundary_file_names_the_file_and_the_field(tmp_path, content, message):
    path = tmp_path / "edges.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PredictError, match=message) as error:
        read_boundary(path, rows=64, cols=64)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name, text, message", [
    ("edges.yaml", "segments:\n  - {edge: west, from_cell: 20\n  - x\n",
     r"not a readable JSON/YAML boundary file \(line 4, column 1: expected ',' or '\}', but got '<stream end>' "
     r"\(while parsing a flow mapping at line 2\)\)$"),
    ("edges.yaml", "", r"holds nothing; expected a mapping \{segments: \[\{edge: west, \.\.\.\}, \.\.\.\]\}$"),
    ("edges.yaml", "- west\n- east\n", r"holds list \['west', 'east'\]; expected a mapping"),
    ("edges.json", "{\"segments\": [", r"not a readable JSON/YAML boundary file \(Expecting value: line 1 column 15"),
    ("folder", None, r"is a folder; expected a boundary file \(JSON or YAML\)$"),
], ids=["yaml-unclosed", "empty", "a-list", "json-cut", "a-folder"])
def test_an_unreadable_boundary_file_is_one_line_naming_where(tmp_path, name, text, message):
    path = tmp_path / name
    path.mkdir() if text is None else path.write_text(text)
    with pytest.raises(PredictError, match=message) as error:
        read_boundary(path, rows=64, cols=64)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


# -- bad inputs -----------------------------------------------------------------------------------------------

class SixteenCellModel(nn.Module):
    def terrain_features(self, terrain):
        return torch.zeros(terrain.shape[0], 1, 16, 16)

    def predict_change(self, features, depths):
        return torch.zeros(depths.shape[0], 1, 16, 16)


class NaNWhereMarked(nn.Module):
    """No change, except NaN for the patches whose terrain features are marked -7."""

    def terrain_features(self, terrain):
        return torch.zeros(terrain.shape[0], 1, 32, 32)

    def predict_change(self, features, depths):
        change = torch.zeros(depths.shape[0], 1, 32, 32)
        change[features[:, 0, 0, 0] == -7] = float("nan")
        return change


def test_a_model_predicting_nan_is_an_error_naming_the_grid_and_no_depth_is_returned():
    terrain, now, later = valley_like()
    predictor = DomainPredictor(NaNWhereMarked(), terrain, pass_order=("dual", "standard"))
    predictor._features["dual"][:, 0, 0, 0] = -7
    with pytest.raises(PredictError, match="non-finite depth changes on the dual grid; its weights or inputs are broken"):
        predictor.step(now, outer_ring_of(later))
    healthy = DomainPredictor(NaNWhereMarked(), terrain, pass_order=("dual", "standard")).step(now, outer_ring_of(later))
    assert np.isfinite(healthy.depth).all()


def test_bad_models_and_inputs_are_clear_errors():
    terrain, now, later = valley_like()
    with pytest.raises(PredictError, match=r"terrain features have shape \(\d+, 1, 16, 16\).*32-cell patches"):
        DomainPredictor(SixteenCellModel(), terrain)
    with pytest.raises(PredictError, match="needs terrain_features"):
        DomainPredictor(nn.Linear(2, 2), terrain)
    with pytest.raises(PredictError, match=r"terrain has shape \(640, 641\)"):
        DomainPredictor(create_model("Arch_02"), terrain[:-1])
    predictor = DomainPredictor(create_model("Arch_02", downsampler="cubic"), terrain)
    bad = now.copy()
    bad[3, 4] = -1
    with pytest.raises(PredictError, match=r"depth at n: cell \(row 3, col 4\) holds -1.0"):
        predictor.step(bad, outer_ring_of(later))
    with pytest.raises(PredictError, match=r"boundary has shape \(10, 10\)"):
        predictor.step(now, np.zeros((10, 10)))


def test_a_plan_too_small_and_times_outside_the_plan_are_clear_errors():
    small = Simulation(project="p", plan="small", terrain=np.zeros((241, 241), np.float32),
                       water_depth=np.zeros((5, 24, 24), np.float32), cell_size_m=10.0, terrain_spacing_m=1.0,
                       output_interval_s=3600.0, source="test")
    model = create_model("Arch_02", downsampler="cubic")
    with pytest.raises(PredictError, match="24 rows: full-domain prediction needs at least one whole 32-cell patch"):
        predict_plan(model, small, start_s=0, steps=1)
    plan = Simulation(project="p", plan="q", terrain=np.zeros((321, 321), np.float32),
                      water_depth=np.zeros((4, 32, 32), np.float32), cell_size_m=10.0, terrain_spacing_m=1.0,
                      output_interval_s=1800.0, source="test")
    with pytest.raises(PredictError, match=r"1 step.* from 60 min end at 120 min, past the plan's last output at 90 min "
                                           r"\(its edge depths are the boundary condition\); start at 30 min at the latest$"):
        predict_plan(model, plan, start_s=3600, steps=1)
    # what fits is said: the latest start for these steps, and how many steps fit from this start
    with pytest.raises(PredictError, match=r"3 step\(s\) of 30 min from 30 min end at 120 min.*; start at 0 min at the "
                                           r"latest or predict at most 2 step\(s\) from 30 min$"):
        predict_plan(model, plan, start_s=1800, steps=3, delta_t_s=1800.0)
    with pytest.raises(PredictError, match="start 200 min is outside the plan"):
        predict_plan(model, plan, start_s=12000, steps=1)
    with pytest.raises(PredictError, match="start 10 min is not one of its output times"):
        predict_plan(model, plan, start_s=600, steps=1)


# -- the command line -----------------------------------------------------------------------------------------

def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "floodlib.predict", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_cli_rolls_a_tiny_run_model_out_over_a_test_plan(tiny_run, tmp_path):
    model = next((tiny_run / "C" / "models").glob("*/model.pth"))
    plan_path = sorted((tiny_run / "data" / "valley").glob("*.h5"))[-1]
    out = tmp_path / "prediction" / "out.h5"
    # the lead time comes from the checkpoint: the tiny profile's samples are 20 min apart
    assert load_model(model).trained_on == {"delta_t_s": 1200.0, "cell_size_m": [10.0]}
    maps = tmp_path / "maps"
    done = cli(model, plan_path, "--start", 0, "--hours", 2, "--out", out, "--geotiff", maps)
    assert done.returncode == 0, done.stderr
    assert "step 2/2 (+40 min)" in done.stderr and f"wrote {out}: 2 step(s) of 20 min" in done.stdout
    plan = read_simulation(plan_path)
    predicted = read_simulation(out)
    # the maps of every step, each with its error against the plan's solver at the same time, and the maximum
    assert f"wrote 7 GeoTIFF(s) to {maps}: out_depth_0min.tif, out_error_0min.tif, out_depth_20min.tif" in done.stdout
    import rasterio

    with rasterio.open(maps / "out_error_40min.tif") as error, rasterio.open(maps / "out_depth_40min.tif") as depth:
        np.testing.assert_array_equal(depth.read(1), predicted.water_depth[2])
        solver = plan.water_depth[2400 // int(plan.output_interval_s)]
        np.testing.assert_allclose(error.read(1), predicted.water_depth[2].astype(np.float64) - solver, atol=1e-6)
        assert error.transform.c == plan.origin_x and error.transform.a == plan.cell_size_m
    # maps of that name are kept unless --force, before anything is predicted; a file is no folder for them
    kept = cli(model, plan_path, "--hours", 1, "--out", tmp_path / "out.h5", "--geotiff", maps)
    assert kept.returncode == 2 and f"{maps / 'out_depth_0min.tif'}: exists (7 map(s) of out in {maps}); pass " \
        "force=True (--force) to replace them all" in kept.stderr and not (tmp_path / "out.h5").exists()
    not_a_folder = cli(model, plan_path, "--hours", 1, "--out", tmp_path / "x.h5", "--geotiff", out)
    assert not_a_folder.returncode == 2 and f"--geotiff {out} is a file; name a folder" in not_a_folder.stderr
    assert predicted.water_depth.shape == (3, *plan.grid_shape)
    np.testing.assert_array_equal(predicted.water_depth[0], plan.water_depth[0])
    np.testing.assert_array_equal(predicted.terrain, plan.terrain)
    assert predicted.output_interval_s == 1200.0 and predicted.extra["start_s"] == 0.0
    assert len(predicted.extra["closure_residuals_m"]) == 2 and predicted.plan.endswith("-surrogate")
    passes = [int(line.split(" after ")[1].split(" pass")[0]) for line in done.stderr.splitlines() if " pass(es)" in line]
    assert predicted.extra["closure_passes"] == passes and len(passes) == 2  # as the command line counted them
    assert predicted.event == plan.event and not predicted.extra["dry_start"] and predicted.extra["precision"] == "32"
    assert predicted.extra["tolerance_m"] == pytest.approx(0.001) and predicted.extra["max_iterations"] == 20
    # the plan's own edges are the boundary condition
    np.testing.assert_array_equal(predicted.water_depth[2][:2], plan.water_depth[2400 // int(plan.output_interval_s)][:2])
    # an existing output is kept unless --force
    again = cli(model, plan_path, "--hours", 1, "--step-min", 20, "--out", out)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    # past the plan's end: a clear error and no file
    late = cli(model, plan_path, "--start", 20, "--hours", 2, "--step-min", 20, "--out", tmp_path / "late.h5")
    assert late.returncode == 2 and "past the plan's last output at 40 min" in late.stderr
    assert not (tmp_path / "late.h5").exists() and not list(tmp_path.glob(".late.h5*"))
    # what the model cannot do, and arguments that are not what they should be: one line each, exit status 2
    copy = tmp_path / "plan_copy.h5"
    copy.write_bytes(plan_path.read_bytes())
    refused = {
        ("--step-min", 60): "the model learnt to predict 20 min ahead (its samples' delta_t); a step of 60 min",
        ("--out", copy, "--force"): f"--out {copy} is the plan it predicts from",
        ("--out", tmp_path, "--force"): f"--out {tmp_path} is a folder",
        ("--device", "gpu"): "--device gpu: not a device torch knows",
        ("--tolerance-mm", -1): "--tolerance-mm -1.0: the closure's tolerance must be > 0 mm",
        ("--max-iterations", 0): "--max-iterations 0: the closure needs at least one pass per step",
    }
    for extra, message in refused.items():
        arguments = [model, copy, *extra] + ([] if "--out" in extra else ["--out", tmp_path / "x.h5"])
        result = cli(*arguments)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (extra, result.stderr)
    assert read_simulation(copy).plan == plan.plan and not (tmp_path / "x.h5").exists()
    folder = cli(model.parent, copy, "--out", tmp_path / "x.h5")
    assert folder.returncode == 2 and f"{model.parent} is a folder; expected a model checkpoint" in folder.stderr
    # where nothing can be written, or the plan is no simulation file: one line, before anything is predicted
    for plan_given, out_given, message in (
            (copy, tmp_path / "plan_copy.h5" / "x.h5", f"{tmp_path / 'plan_copy.h5'}: --out's folder: "
                                                        f"{tmp_path / 'plan_copy.h5'} is a file, not a folder"),
            (tmp_path / "maps", tmp_path / "x.h5", f"{tmp_path / 'maps'}: file: is a folder; expected an HDF5 file"),
            (model, tmp_path / "x.h5", f"{model}: file: is not a readable HDF5 file (it is a zip archive, as a torch "
                                       "checkpoint (model.pth) is)")):
        result = cli(model, plan_given, "--out", out_given)
        assert result.returncode == 2 and result.stderr.strip() == f"error: {message}", result.stderr
    # a checkpoint that does not record what it learnt (written before floodlib recorded it) is used, and said so
    from floodlib.models import create_model as make

    unrecorded = save_model(make("Arch_02", downsampler="cubic", layers=3, channels=4), tmp_path / "old.pth")
    old = cli(unrecorded, plan_path, "--step-min", 20, "--out", tmp_path / "old.h5")
    assert old.returncode == 0 and f"note: {unrecorded} does not record the lead time and cell size it learnt" in old.stderr


def test_the_cli_takes_a_users_edge_inflow_from_a_dry_start(tiny_run, tmp_path):
    model = next((tiny_run / "C" / "models").glob("*/model.pth"))
    plan_path = sorted((tiny_run / "data" / "valley").glob("*.h5"))[0]
    edges = tmp_path / "edges.yaml"
    edges.write_text("segments:\n  - {edge: west, from_cell: 20, to_cell: 40, times_min: [0, 60], discharge_m3s: [0, 30]}\n")
    out = tmp_path / "user.h5"
    done = cli(model, plan_path, "--boundary", edges, "--dry-start", "--hours", 1, "--out", out)
    assert done.returncode == 0, done.stderr
    predicted = read_simulation(out)
    assert (predicted.water_depth[0] == 0).all()
    assert (predicted.water_depth[1][20:40, :2] > 0).all() and np.isfinite(predicted.water_depth).all()
    assert predicted.extra["boundary"] == str(edges)
    assert predicted.extra["dry_start"] and predicted.event is None  # not the plan's own inflow: the user's edges were
    # what drove it is kept in the prediction, not only where it lay: the boundary as read, the model's checksum
    assert predicted.extra["boundary_file"] == {"segments": [{"edge": "west", "from_cell": 20, "to_cell": 40,
                                                              "times_min": [0, 60], "discharge_m3s": [0, 30]}]}
    import hashlib

    assert predicted.extra["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_a_model_refuses_cells_of_another_size_and_another_lead_time():
    from floodlib.predict.plan import check_trained_on

    model = create_model("Arch_02", downsampler="cubic")
    plan = Simulation(project="muncie", plan="p01", terrain=np.zeros((321, 321), np.float32),
                      water_depth=np.zeros((3, 32, 32), np.float32), cell_size_m=40.0, terrain_spacing_m=4.0,
                      output_interval_s=1800.0, source="test")
    check_trained_on(model, plan, delta_t_s=1800.0, name="plan")  # nothing recorded: nothing to check
    model.trained_on = {"delta_t_s": 3600.0, "cell_size_m": [10.0]}
    with pytest.raises(PredictError, match="plan: cells of 40 m; the model learnt on cells of 10 m"):
        predict_plan(model, plan, start_s=0, steps=1, delta_t_s=3600.0, name="plan")
    model.trained_on = {"delta_t_s": 3600.0, "cell_size_m": [10.0, 40.0]}
    with pytest.raises(PredictError, match="learnt to predict 60 min ahead .* a step of 30 min"):
        predict_plan(model, plan, start_s=0, steps=1, delta_t_s=1800.0, name="plan")
    # without a lead time, the one the model learnt
    model.trained_on = {"delta_t_s": 1800.0, "cell_size_m": [40.0]}
    np.testing.assert_array_equal(predict_plan(model, plan, start_s=0, steps=2).times_s, [0.0, 1800.0, 3600.0])


def test_the_cli_stops_on_ctrl_c_with_one_line_and_no_file(tmp_path, monkeypatch, capsys):
    import floodlib.predict.__main__ as command

    plan = Simulation(project="p", plan="q", terrain=np.zeros((321, 321), np.float32),
                      water_depth=np.zeros((3, 32, 32), np.float32), cell_size_m=10.0, terrain_spacing_m=1.0,
                      output_interval_s=3600.0, source="test")
    write_simulation(tmp_path / "plan.h5", plan)
    save_model(create_model("Arch_02", downsampler="cubic"), tmp_path / "model.pth")

    def interrupted(*args, **kwargs):  # Ctrl-C while the closure runs
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "predict_plan", interrupted)
    assert command.main([str(tmp_path / "model.pth"), str(tmp_path / "plan.h5"), "--out", str(tmp_path / "o.h5")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted; nothing was written to {tmp_path / 'o.h5'}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pth", "plan.h5"]


def test_the_cli_names_a_missing_model_and_a_plan_without_a_boundary_for_a_dry_start(tmp_path):
    plan = Simulation(project="p", plan="q", terrain=np.zeros((321, 321), np.float32),
                      water_depth=np.zeros((3, 32, 32), np.float32), cell_size_m=10.0, terrain_spacing_m=1.0,
                      output_interval_s=3600.0, source="test")
    write_simulation(tmp_path / "plan.h5", plan)
    missing = cli(tmp_path / "nope.pth", tmp_path / "plan.h5", "--out", tmp_path / "o.h5")
    assert missing.returncode == 2 and f"{tmp_path / 'nope.pth'}: model checkpoint does not exist" in missing.stderr
    save_model(create_model("Arch_02", downsampler="cubic"), tmp_path / "model.pth")
    dry = cli(tmp_path / "model.pth", tmp_path / "plan.h5", "--dry-start", "--out", tmp_path / "o.h5")
    assert dry.returncode == 2 and "--dry-start needs --boundary" in dry.stderr
    assert not (tmp_path / "o.h5").exists()


def test_the_cli_never_writes_over_its_inputs_and_refuses_a_boundary_outside_the_area(tmp_path):
    """--force replaces an earlier prediction, never the model, plan or boundary file it reads; a boundary
    segment whose cells all lie outside the model's area would drive nothing, and says so."""
    depth = np.zeros((3, 32, 32), np.float32)
    depth[:, :, :4] = np.nan  # the western 4 columns lie outside the model's area
    plan = Simulation(project="p", plan="q", terrain=np.zeros((321, 321), np.float32), water_depth=depth,
                      cell_size_m=10.0, terrain_spacing_m=1.0, output_interval_s=3600.0, source="test")
    write_simulation(tmp_path / "plan.h5", plan)
    save_model(create_model("Arch_02", downsampler="cubic"), tmp_path / "model.pth")
    edges = tmp_path / "edges.yaml"
    edges.write_text("segments:\n  - {edge: north, times_min: [0, 60], depth_m: [0.2, 0.3]}\n")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    for out, what in ((tmp_path / "model.pth", "the model it predicts with"),
                      (tmp_path / "plan.h5", "the plan it predicts from"), (edges, "the boundary file it reads")):
        for force in ([], ["--force"]):
            result = cli(tmp_path / "model.pth", tmp_path / "plan.h5", "--boundary", edges, "--out", out, *force)
            assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == \
                f"error: --out {out} is {what}; write the prediction to another file", result.stderr
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    outside = tmp_path / "outside.yaml"
    outside.write_text("segments:\n  - {edge: west, times_min: [0, 60], depth_m: [0.2, 0.3]}\n")
    result = cli(tmp_path / "model.pth", tmp_path / "plan.h5", "--boundary", outside, "--out", tmp_path / "o.h5")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: {outside}: segments[0]: every cell it sets lies outside the model's area; expected edge cells where "
        "the plan has depths")
    assert not (tmp_path / "o.h5").exists()
