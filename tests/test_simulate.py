"""The built-in simulator: terrain generators, landlab OverlandFlow runs and project batches.

Small grids (24-40 cells) and short durations keep the whole file to a few tens of seconds on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from floodlib.data.simulate import (
    Hydrograph,
    PlanFailedError,
    PlanSpec,
    ProjectSpec,
    plan_specs,
    run_overland_flow,
    simulate_plan,
    simulate_project,
    inflow_strip,
)
from floodlib.data.store import SimulationFileError, read_simulation
from floodlib.data.terrain import (
    DemSource,
    ValleyParams,
    cell_elevation,
    dem_terrain,
    valley_terrain,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MINNESOTA_DEM = SHARED_DATA / "dem" / "lidar_pkg_dem_1m_minnesota.tif"

SMALL_EVENT = Hydrograph(peak_discharge_m3s=8.0, time_to_peak_s=600.0, duration_s=1500.0, base_flow_m3s=0.5)


def small_plan(**changes) -> PlanSpec:
    settings = dict(terrain=ValleyParams(channel_width_m=30.0, meander_amplitude_m=40.0, meander_wavelength_m=300.0),
                    hydrograph=SMALL_EVENT, rows=32, cols=24, terrain_seed=7, duration_s=1800.0)
    settings.update(changes)
    return PlanSpec(**settings)


@pytest.fixture(scope="module")
def small_simulation():
    spec = small_plan()
    return spec, simulate_plan(spec, project="tests", plan="small")


# --- terrain -------------------------------------------------------------------------------------------

def test_valley_terrain_shape_determinism_and_low_line():
    params = ValleyParams(downstream_edge="east")
    first = valley_terrain(params, rows=24, cols=40, seed=3)
    again = valley_terrain(params, rows=24, cols=40, seed=3)
    other = valley_terrain(params, rows=24, cols=40, seed=4)
    assert first.elevation.shape == (241, 401) and first.elevation.dtype == np.float32
    assert np.array_equal(first.elevation, again.elevation)
    assert not np.array_equal(first.elevation, other.elevation)
    z = first.elevation.astype(np.float64)
    # Draining east: the bed falls by the regional slope from the west edge to the east edge.
    line = first.channel_centerline
    bed_west = z[int(round(line[0, 0])), 0]
    bed_east = z[int(round(line[-1, 0])), -1]
    assert_allclose(bed_west - bed_east, params.slope * 400.0, atol=0.4)
    # The channel is the valley's low line: in every cross-section the lowest point lies in the channel.
    lowest_row = z.argmin(axis=0)
    assert np.abs(lowest_row - line[:, 0]).max() <= params.channel_width_m / 2
    # ... and stays so on the 10 m grid (cell means), so it is connected for the solver.
    cells = cell_elevation(z)
    centre_rows = line[5::10, 0] / 10.0
    assert np.abs(cells.argmin(axis=0) + 0.5 - centre_rows).max() <= params.channel_width_m / 20


def test_valley_terrain_orientation():
    south = valley_terrain(ValleyParams(downstream_edge="south", roughness_m=0.0), rows=30, cols=24, seed=1)
    north = valley_terrain(ValleyParams(downstream_edge="north", roughness_m=0.0), rows=30, cols=24, seed=1)
    assert south.elevation.shape == north.elevation.shape == (301, 241)
    # Same valley, mirrored north-south: the downstream edge is the low one.
    assert_allclose(south.elevation, north.elevation[::-1], atol=1e-5)
    assert south.elevation[-1].min() < south.elevation[0].min() - 0.5


def test_cell_elevation_is_the_mean_of_the_bilinear_surface():
    ramp = np.add.outer(np.arange(21.0) * 0.1, np.arange(31.0) * 0.02)  # 2 x 3 cells
    cells = cell_elevation(ramp)
    # For a plane the mean over a cell equals the value at its centre.
    expected = np.add.outer((np.arange(2) * 10 + 5) * 0.1, (np.arange(3) * 10 + 5) * 0.02)
    assert_allclose(cells, expected, atol=1e-12)


def test_terrain_rejects_bad_requests():
    with pytest.raises(ValueError, match="rows: 600 cells is outside"):
        valley_terrain(ValleyParams(), rows=600, cols=24, seed=0)
    with pytest.raises(ValueError, match="channel_width_m: 12.0 m is too narrow"):
        ValleyParams(channel_width_m=12.0)
    with pytest.raises(ValueError, match="'up' is not an edge name"):
        ValleyParams(downstream_edge="up")


needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared test data folder {SHARED_DATA} is absent")


@needs_shared
def test_dem_terrain_window_and_mirror_tiling():
    window = dem_terrain(DemSource(str(MINNESOTA_DEM), row_offset=100, col_offset=50), rows=20, cols=30)
    assert window.elevation.shape == (201, 301)
    assert window.crs == "EPSG:26915"
    assert window.description["mirrored_rows"] is False
    import rasterio

    with rasterio.open(MINNESOTA_DEM) as dataset:
        dem = dataset.read(1)
        x0, y0 = dataset.transform.c, dataset.transform.f
    assert_allclose(window.elevation, dem[100:301, 50:351])
    assert_allclose((window.origin_x, window.origin_y), (x0 + 50.5, y0 - 100.5))
    # 48 cells need 481 points > 400: extended by reflection about the last row, no repeated row.
    tiled = dem_terrain(DemSource(str(MINNESOTA_DEM)), rows=48, cols=24)
    assert tiled.description["mirrored_rows"] is True and tiled.description["mirrored_cols"] is False
    assert_allclose(tiled.elevation[:400], dem[:400, :241])
    assert_allclose(tiled.elevation[400:481], dem[398:317:-1, :241])
    with pytest.raises(SimulationFileError, match="row_offset: a window of 201 points from row 300 leaves the DEM"):
        dem_terrain(DemSource(str(MINNESOTA_DEM), row_offset=300), rows=20, cols=20)


def test_dem_nodata_in_window_is_a_clear_error(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    values = np.full((120, 120), 50.0, dtype=np.float32)
    values[100, 100] = -9999.0  # inside a 10-cell window (points 0..100), outside an 8-cell one
    path = tmp_path / "holey.tif"
    with rasterio.open(path, "w", driver="GTiff", height=120, width=120, count=1, dtype="float32",
                       transform=Affine(1.0, 0.0, 1000.0, 0.0, -1.0, 2000.0), nodata=-9999.0) as dataset:
        dataset.write(values, 1)
    assert dem_terrain(DemSource(str(path)), rows=8, cols=8).elevation.shape == (81, 81)  # hole outside
    with pytest.raises(SimulationFileError, match=r"holey\.tif: elevation: 1 of 10201 points .* are nodata"):
        dem_terrain(DemSource(str(path)), rows=10, cols=10)
    coarse = tmp_path / "coarse.tif"
    with rasterio.open(coarse, "w", driver="GTiff", height=50, width=50, count=1, dtype="float32",
                       transform=Affine(5.0, 0.0, 0.0, 0.0, -5.0, 0.0)) as dataset:
        dataset.write(np.ones((50, 50), dtype=np.float32), 1)
    with pytest.raises(SimulationFileError, match=r"coarse\.tif: pixel width: 5.0 m"):
        dem_terrain(DemSource(str(coarse)), rows=8, cols=8)


# --- solver --------------------------------------------------------------------------------------------

def test_hydrograph_shape_and_exact_volume():
    hydrograph = Hydrograph(peak_discharge_m3s=50.0, time_to_peak_s=1000.0, duration_s=3000.0, base_flow_m3s=2.0)
    assert hydrograph.discharge(0.0) == pytest.approx(2.0)
    assert hydrograph.discharge(1000.0) == pytest.approx(50.0)
    assert hydrograph.discharge(5000.0) == pytest.approx(2.0)
    times = np.linspace(0.0, 4000.0, 400001)
    assert hydrograph.volume(4000.0) == pytest.approx(np.trapezoid(hydrograph.discharge(times), times), rel=1e-9)
    assert hydrograph.volume(4000.0) == pytest.approx(2.0 * 4000 + 48.0 * 3000 / 2)


def test_plan_depths_frames_and_mass_balance(small_simulation):
    spec, simulation = small_simulation
    depth = simulation.water_depth
    assert depth.dtype == np.float32 and depth.shape == (31, 32, 24)  # frames at 0, 60, ..., 1800 s
    assert simulation.output_interval_s == 60.0
    assert simulation.terrain.shape == (321, 241)
    assert np.isfinite(depth).all() and depth.min() >= 0.0
    assert depth[0].max() == 0.0 and depth[-1].max() > 0.3
    assert simulation.source.startswith("landlab ") and "steep_slopes=True" in simulation.source
    balance = simulation.extra["mass_balance"]
    assert abs(balance["relative_error"]) < 0.01
    # Independent check: what the stored frames hold at the end plus the measured outflow equals the
    # exact integral of the hydrograph.
    stored = float(depth[-1].sum(dtype=np.float64)) * 100.0
    inflow = spec.hydrograph.volume(spec.duration_s)
    assert_allclose(balance["inflow_m3"], inflow, rtol=1e-3)
    assert_allclose(stored + balance["outflow_m3"], inflow, rtol=0.01)
    assert balance["outflow_m3"] > 0.05 * inflow  # water does reach and leave the open edge
    assert simulation.event["edge"] == "north" and simulation.extra["outflow_edge"] == "south"
    assert_allclose(simulation.event["discharge_m3s"][10], spec.hydrograph.discharge(600.0), rtol=1e-6)


def test_same_spec_gives_bit_identical_depths(small_simulation):
    spec, simulation = small_simulation
    again = simulate_plan(spec, project="tests", plan="small")
    assert np.array_equal(again.water_depth, simulation.water_depth)
    assert np.array_equal(again.terrain, simulation.terrain)


def test_closed_flat_basin_ends_level_holding_the_inflow():
    rows, cols = 20, 20
    hydrograph = Hydrograph(peak_discharge_m3s=2.0, time_to_peak_s=300.0, duration_s=900.0)
    result = run_overland_flow(np.full((rows, cols), 10.0), inflow_cells=inflow_strip(
        rows=rows, cols=cols, edge="west", location=0.5, width_m=40.0), hydrograph=hydrograph,
        outflow_edge=None, manning_n=0.03, duration_s=3600.0)
    final = result.water_depth[-1].astype(np.float64)
    volume = hydrograph.volume(3600.0)  # 900 m³ over 400 cells of 100 m²: 2.25 cm
    assert result.mass_balance["outflow_m3"] == 0.0
    assert_allclose(final.sum() * 100.0, volume, rtol=1e-3)
    level = volume / (rows * cols * 100.0)
    # Spread over the whole basin and near level; the scheme leaves a slowly decaying slosh of ~10 %.
    assert final.min() > 0.5 * level
    assert np.abs(final - level).mean() < 0.15 * level


def test_steady_sheet_flow_on_an_inclined_plane_reaches_manning_normal_depth():
    rows, cols = 40, 12
    slope, n, discharge = 0.002, 0.05, 3.0  # 3 m³/s over 120 m: q = 0.025 m²/s
    elevation = np.repeat((slope * 10.0 * (rows - 1 - np.arange(rows)))[:, None], cols, axis=1)
    inflow = np.zeros((rows, cols), dtype=bool)
    inflow[0] = True
    steady = Hydrograph(peak_discharge_m3s=discharge, time_to_peak_s=1.0, duration_s=1e9,
                        base_flow_m3s=discharge * 0.999999)
    result = run_overland_flow(elevation, inflow_cells=inflow, hydrograph=steady, outflow_edge="south",
                               manning_n=n, duration_s=5400.0, outfall_slope=slope)
    normal_depth = (discharge / (cols * 10.0) * n / np.sqrt(slope)) ** 0.6  # 0.188 m
    mid_reach = result.water_depth[-1, 10:30].astype(np.float64)
    assert_allclose(mid_reach.mean(), normal_depth, rtol=0.1)
    assert mid_reach.std() < 0.05 * normal_depth  # uniform across the plane
    # Steady state: the outflow rate matches the inflow.
    assert_allclose(result.water_depth[-1].sum(), result.water_depth[-11].sum(), rtol=0.01)


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="peak_discharge_m3s: -5.0 must be a finite number > 0"):
        Hydrograph(peak_discharge_m3s=-5.0, time_to_peak_s=600.0, duration_s=1200.0)
    with pytest.raises(ValueError, match="PlanSpec.inflow_edge: 'upstream' is not an edge name"):
        small_plan(inflow_edge="upstream")
    with pytest.raises(ValueError, match="'south' is also the open outflow edge"):
        small_plan(inflow_edge="south")
    with pytest.raises(ValueError, match="rows: 1000 cells is outside the allowed"):
        small_plan(rows=1000)
    with pytest.raises(ValueError, match="duration_s: 1000.0 s is not a whole number of output intervals"):
        small_plan(duration_s=1000.0)


# --- projects ------------------------------------------------------------------------------------------

def tiny_project(**changes) -> ProjectSpec:
    settings = dict(name="tiny", terrain=ValleyParams(channel_width_m=30.0, meander_amplitude_m=30.0),
                    n_plans=3, seed=11, rows=24, cols=24, peak_discharge_m3s=(3.0, 8.0),
                    time_to_peak_s=(300.0, 600.0), event_duration_s=(900.0, 1200.0), duration_s=900.0,
                    inflow_width_m=30.0)
    settings.update(changes)
    return ProjectSpec(**settings)


def test_plan_specs_are_deterministic_and_varied():
    project = tiny_project(n_plans=6)
    first, again = plan_specs(project), plan_specs(project)
    assert first == again
    assert len({spec.terrain_seed for spec in first}) == 6
    assert len({spec.hydrograph.peak_discharge_m3s for spec in first}) == 6
    assert len({spec.inflow_edge for spec in first}) > 1
    assert all(spec.inflow_edge != "south" and spec.outflow_edge == "south" for spec in first)
    assert all(0.03 <= spec.manning_n <= 0.06 for spec in first)
    assert plan_specs(tiny_project(n_plans=6, seed=12)) != first


def test_project_files_workers_and_skip(tmp_path):
    project = tiny_project()
    serial = simulate_project(project, tmp_path / "serial", workers=1, progress=False)
    parallel = simulate_project(project, tmp_path / "parallel", workers=2, progress=False)
    assert [path.name for path in serial] == ["plan_000.h5", "plan_001.h5", "plan_002.h5"]
    assert all(path.parent == tmp_path / "serial" / "tiny" for path in serial)
    for one, two in zip(serial, parallel):
        a, b = read_simulation(one), read_simulation(two)
        assert np.array_equal(a.water_depth, b.water_depth)
        assert a.water_depth.shape == (16, 24, 24)
        assert abs(a.extra["mass_balance"]["relative_error"]) < 0.01
        assert a.plan == one.stem and a.project == "tiny"
    # A second run skips every plan: the files are not rewritten.
    before = [(path.stat().st_mtime_ns, path.read_bytes()) for path in serial]
    assert simulate_project(project, tmp_path / "serial", workers=2, progress=False) == serial
    assert [(path.stat().st_mtime_ns, path.read_bytes()) for path in serial] == before
    # A corrupt file is not a finished plan: it is simulated again.
    serial[1].write_bytes(b"not hdf5")
    simulate_project(project, tmp_path / "serial", workers=1, progress=False)
    assert np.array_equal(read_simulation(serial[1]).water_depth, read_simulation(parallel[1]).water_depth)


def test_plans_made_from_other_settings_are_kept_aside_and_simulated_again(tmp_path):
    """A plan file is reused only when it was made from the same plan: another seed (other events), or the
    same DEM path holding other elevations, moves the old files to <out>.replaced-<time>/ and simulates anew;
    a DEM moved to another path with the same content is the same terrain."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    out = tmp_path / "data"
    first = simulate_project(tiny_project(n_plans=2), out, workers=1, progress=False)
    old = {path.name: path.read_bytes() for path in first}
    again = simulate_project(tiny_project(n_plans=2, seed=12), out, workers=1, progress=False)
    assert again == first and not any(path.read_bytes() == old[path.name] for path in again)
    (kept,) = tmp_path.glob("data.replaced-*")
    assert {path.name: path.read_bytes() for path in (kept / "tiny").glob("*.h5")} == old

    def dem(path, base):
        values = base + np.add.outer(np.arange(100.0), np.arange(100.0)).astype(np.float32) * 0.01
        with rasterio.open(path, "w", driver="GTiff", height=100, width=100, count=1, dtype="float32",
                           crs="EPSG:26915", transform=Affine(1.0, 0.0, 5000.0, 0.0, -1.0, 9000.0)) as dataset:
            dataset.write(values.astype(np.float32), 1)
        return path

    project = tiny_project(name="tile", terrain=DemSource(str(dem(tmp_path / "tile.tif", 100.0))), n_plans=1,
                           rows=8, cols=8)
    (path,) = simulate_project(project, out, workers=1, progress=False)
    lowest = float(read_simulation(path).terrain.min())
    assert 100 <= lowest < 102
    dem(tmp_path / "tile.tif", 200.0)  # the same file name, other elevations
    simulate_project(project, out, workers=1, progress=False)
    assert read_simulation(path).terrain.min() == pytest.approx(lowest + 100.0)
    assert len(list(tmp_path.glob("data.replaced-*/tile/plan_000.h5"))) == 1
    # A file written before plans recorded their DEM's checksum, whose DEM has moved since: compared by the
    # elevations it holds, it is the same plan and is kept as it is.
    import h5py

    with h5py.File(path, "a") as h5:
        del h5.attrs["terrain_sha256"]
    (tmp_path / "tile.tif").rename(tmp_path / "moved.tif")
    moved = tiny_project(name="tile", terrain=DemSource(str(tmp_path / "moved.tif")), n_plans=1, rows=8, cols=8)
    before = path.stat().st_mtime_ns
    simulate_project(moved, out, workers=1, progress=False)
    assert path.stat().st_mtime_ns == before


def test_failing_plan_is_named_and_others_are_kept(tmp_path):
    # A missing DEM fails while drawing the plans, before any runs.
    project = tiny_project(terrain=DemSource(str(tmp_path / "missing.tif")), n_plans=2)
    with pytest.raises(SimulationFileError, match="missing.tif: file: does not exist"):
        simulate_project(project, tmp_path, workers=1, progress=False)
    # A DEM whose southern part is nodata: every plan's window lies on the data (those drawn over the nodata
    # moved to the nearest complete window), so every plan is written.
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    values = np.full((260, 260), 20.0, dtype=np.float32)
    values[200:, :] = np.nan
    path = tmp_path / "partial.tif"
    with rasterio.open(path, "w", driver="GTiff", height=260, width=260, count=1, dtype="float32",
                       transform=Affine(1.0, 0.0, 0.0, 0.0, -1.0, 260.0), nodata=np.nan) as dataset:
        dataset.write(values, 1)
    project = tiny_project(name="partial", terrain=DemSource(str(path)), n_plans=4, rows=8, cols=8, seed=5)
    # The file has no CRS: taken as metres, said once per drawing of the plans, naming the fix.
    with pytest.warns(UserWarning, match=f"{path}: no CRS: its coordinates are taken to be metres.*project 'partial' "
                                         f"carry no CRS.*gdal_edit.py -a_srs EPSG:<code> {path}"):
        offsets = [spec.terrain.row_offset for spec in plan_specs(project)]
    assert max(offsets) == 200 - 81 and all(0 <= offset <= 200 - 81 for offset in offsets), offsets
    with pytest.warns(UserWarning, match="no CRS"):
        simulate_project(project, tmp_path, workers=2, progress=False)
    assert sorted(p.stem for p in (tmp_path / "partial").glob("*.h5")) == [f"plan_{i:03d}" for i in range(4)]
    # A plan that cannot be written (a folder where its file goes) fails alone: it is named, the others kept.
    out = tmp_path / "blocked"
    (out / "tiny" / "plan_001.h5").mkdir(parents=True)
    with pytest.raises(PlanFailedError) as caught:
        simulate_project(tiny_project(rows=8, cols=8, n_plans=3), out, workers=2, progress=False)
    message = str(caught.value)
    assert message.startswith("project 'tiny': 1 of 3 plans failed (plan_001: IsADirectoryError: ")
    assert message.endswith(f"the other plans' files are in {out / 'tiny'}")
    assert sorted(p.name for p in (out / "tiny").iterdir()) == ["plan_000.h5", "plan_001.h5", "plan_002.h5"]
    assert (out / "tiny" / "plan_001.h5").is_dir() and not list((out / "tiny").glob(".*.tmp"))


def test_a_script_without_a_main_guard_is_told_why_its_workers_stopped(tmp_path):
    """Each worker is a new Python that imports the calling script: unguarded, the script starts the simulation
    again there and the pool breaks. One message says why and what to do, not one line per plan."""
    script = tmp_path / "simulate_unguarded.py"
    script.write_text(
        "from floodlib.data.simulate import ProjectSpec, simulate_project\n"
        "from floodlib.data.terrain import ValleyParams\n"
        "project = ProjectSpec(name='tiny', terrain=ValleyParams(channel_width_m=30.0, meander_amplitude_m=30.0),\n"
        "                      n_plans=3, seed=11, rows=24, cols=24, duration_s=900.0)\n"
        f"simulate_project(project, {str(tmp_path / 'out')!r}, workers=2, progress=False)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("floodlib.data.simulate.project.PlanFailedError: project 'tiny': the simulation's worker "
                           "processes stopped, 3 of 3 plans unfinished.")
    assert 'under `if __name__ == "__main__":`' in last and "workers=1 simulates in this process" in last
    assert last.count("BrokenProcessPool") == 0


@needs_shared
def test_the_open_edge_never_lets_water_in():
    """A lidar window that drains away from its open (south) edge, the water ponding against it: the
    scheme's inertia used to carry discharge inward through the open edge, water from nowhere (in these 15
    minutes: outflow -1,189 m³, 13 % more water stored than had entered). Water only leaves: outflow >= 0,
    and what is stored is what entered less what left."""
    project = ProjectSpec(name="t", terrain=DemSource(str(MINNESOTA_DEM)), n_plans=1, seed=1, rows=8, cols=8,
                          duration_s=900.0)
    spec = plan_specs(project)[0]
    assert spec.resolved_outflow_edge == "south"
    balance = simulate_plan(spec, project="t", plan="p").extra["mass_balance"]
    assert balance["outflow_m3"] >= 0
    assert balance["final_storage_m3"] <= balance["inflow_m3"]
    stored = balance["inflow_m3"] - balance["outflow_m3"]
    assert balance["final_storage_m3"] == pytest.approx(stored, rel=0.002)
    assert balance["final_storage_m3"] > 0.9 * balance["inflow_m3"]  # it ponds: little reaches the open edge
