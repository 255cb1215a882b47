"""Depth maps as GeoTIFFs: values, georeference and CRS read back by GDAL; error maps; refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from floodlib.data.export import export_maps
from floodlib.data.geotiff import read_geotiff
from floodlib.data.store import Simulation, SimulationFileError, read_simulation, write_simulation

ROOT = Path(__file__).resolve().parents[1]


def flood(*, rows=6, cols=5, frames=7, interval_s=1200.0, crs="EPSG:26915", origin=(429300.0, 5150850.0), seed=0,
          extra=None) -> Simulation:
    """A plan with known depths: frame t holds t + cell index / 100 m, two cells outside the area."""
    rng = np.random.default_rng(seed)
    depth = (np.arange(frames)[:, None, None] + np.arange(rows * cols).reshape(rows, cols) / 100.0).astype(np.float32)
    depth += rng.uniform(0, 0.001, depth.shape).astype(np.float32)
    depth[:, 0, 0] = np.nan
    depth[:, -1, 2] = np.nan
    terrain = np.full((rows * 10 + 1, cols * 10 + 1), 380.0, dtype=np.float32)
    return Simulation(project="p", plan="plan_1", terrain=terrain, water_depth=depth, cell_size_m=10.0,
                      terrain_spacing_m=1.0, output_interval_s=interval_s, source="test", origin_x=origin[0],
                      origin_y=origin[1], crs=crs, extra=dict(extra or {}))


def opened(path: Path):
    import rasterio

    with rasterio.open(path) as dataset:
        return dataset.read(1), dataset.transform, dataset.crs, dataset.units[0], dataset.descriptions[0], \
            dataset.tags(1), dataset.nodata


def test_depth_and_maximum_maps_hold_the_frames_where_the_grid_lies(tmp_path):
    simulation = flood()
    plan = write_simulation(tmp_path / "plan_1.h5", simulation)
    written = export_maps(plan, tmp_path / "maps")
    # every 60 min of 20-min frames (0..120 min), and the maximum
    assert [p.name for p in written] == ["plan_1_depth_0min.tif", "plan_1_depth_60min.tif", "plan_1_depth_120min.tif",
                                         "plan_1_max_depth.tif"]
    for path, frame in zip(written[:3], (0, 3, 6)):
        values, transform, crs, unit, description, tags, nodata = opened(path)
        np.testing.assert_array_equal(values, simulation.water_depth[frame])  # NaN where NaN, bit for bit elsewhere
        assert tuple(transform)[:6] == (10.0, 0.0, 429300.0, 0.0, -10.0, 5150850.0)
        assert crs.to_epsg() == 26915 and unit == "metre" and description == "water depth" and np.isnan(nodata)
        assert tags["time_min"] == f"{frame * 20}" and tags["plan"] == "plan_1" and tags["source_file"] == "plan_1.h5"
    maximum = opened(written[3])[0]
    np.testing.assert_array_equal(maximum, simulation.water_depth[6])  # depths grow: the last frame is the maximum
    # floodlib's own DEM reader takes the map back to the store's metres
    raster = read_geotiff(written[1])
    assert (raster.x0, raster.y0, raster.dx, raster.crs) == (429300.0, 5150850.0, 10.0, "EPSG:26915")
    # chosen times, and no maximum
    chosen = export_maps(plan, tmp_path / "chosen", times_min=[40, 100], max_depth=False)
    assert [p.name for p in chosen] == ["plan_1_depth_40min.tif", "plan_1_depth_100min.tif"]
    np.testing.assert_array_equal(opened(chosen[1])[0], simulation.water_depth[5])
    # a map every 50 min of 20-min frames: only the frames it meets, and the last
    assert [p.name for p in export_maps(plan, tmp_path / "every", every_min=50, max_depth=False)] == [
        "plan_1_depth_0min.tif", "plan_1_depth_100min.tif", "plan_1_depth_120min.tif"]


def test_the_maximum_is_taken_cell_by_cell_over_every_frame(tmp_path):
    simulation = flood(frames=3)
    simulation.water_depth[1, 2, 3] = 9.5  # a peak in the middle frame
    plan = write_simulation(tmp_path / "plan.h5", simulation)
    maximum = opened(export_maps(plan, tmp_path / "maps", times_min=[0])[-1])[0]
    expected = np.fmax(np.fmax(simulation.water_depth[0], simulation.water_depth[1]), simulation.water_depth[2])
    np.testing.assert_array_equal(maximum, expected)
    assert maximum[2, 3] == np.float32(9.5) and np.isnan(maximum[0, 0])


@pytest.mark.parametrize("crs, foot", [("EPSG:2236", 1200 / 3937), ("EPSG:2222", 0.3048)], ids=["ftUS", "ft"])
def test_a_grid_in_a_crs_in_feet_gets_its_geotransform_in_feet(tmp_path, crs, foot):
    simulation = flood(crs=crs, origin=(640000.0 * foot, 1500000.0 * foot))
    plan = write_simulation(tmp_path / "plan.h5", simulation)
    path = export_maps(plan, tmp_path / "maps", times_min=[0], max_depth=False)[0]
    values, transform, *_ = opened(path)
    assert transform.c == pytest.approx(640000.0, rel=1e-14) and transform.f == pytest.approx(1500000.0, rel=1e-14)
    assert transform.a == pytest.approx(10.0 / foot, rel=1e-14)
    raster = read_geotiff(path)  # the depths' unit is stated (metre), so only the coordinates are converted
    assert raster.x0 == pytest.approx(simulation.origin_x, rel=1e-14) and raster.dx == pytest.approx(10.0, rel=1e-14)
    np.testing.assert_array_equal(raster.values, simulation.water_depth[0])


def test_a_local_grid_without_crs_is_written_without_one(tmp_path):
    plan = write_simulation(tmp_path / "plan.h5", flood(crs=None, origin=(0.0, 960.0)))
    values, transform, crs, *_ = opened(export_maps(plan, tmp_path / "maps", times_min=[20])[0])
    assert crs is None and tuple(transform)[:6] == (10.0, 0.0, 0.0, 0.0, -10.0, 960.0)


def test_error_maps_are_depth_minus_the_reference_at_the_same_time_of_the_plan(tmp_path):
    solver = flood(frames=10)
    solver_path = write_simulation(tmp_path / "solver.h5", solver)
    # a prediction: hourly frames from 60 min (frames 3, 6, 9 of the solver's 20-min ones), too wet by 0.25 m
    predicted = flood(frames=3, interval_s=3600.0, extra={"start_s": 3600.0})
    predicted.water_depth[:] = solver.water_depth[[3, 6, 9]] + np.float32(0.25)
    predicted.water_depth[2, 1, 1] = 0.0
    prediction = write_simulation(tmp_path / "prediction.h5", predicted)
    written = export_maps(prediction, tmp_path / "maps", against=solver_path, max_depth=False)
    assert [p.name for p in written] == ["prediction_depth_60min.tif", "prediction_error_60min.tif",
                                         "prediction_depth_120min.tif", "prediction_error_120min.tif",
                                         "prediction_depth_180min.tif", "prediction_error_180min.tif"]
    error, *_, description, tags, _ = opened(written[-1])
    expected = predicted.water_depth[2].astype(np.float64) - solver.water_depth[9]
    np.testing.assert_allclose(error, expected, atol=1e-6)
    assert error[1, 1] == pytest.approx(-solver.water_depth[9, 1, 1]) and np.isnan(error[-1, 2])
    assert description == "depth error" and tags["reference_file"] == "solver.h5" and tags["time_min"] == "180"


def test_refusals_name_the_file_and_the_value_and_write_nothing(tmp_path):
    plan = write_simulation(tmp_path / "plan.h5", flood())
    maps = tmp_path / "maps"
    with pytest.raises(SimulationFileError, match=r"plan.h5: times: 50 min is not one of its frames; expected one of "
                                                  r"0, 20, 40, 60, 80, 100, 120"):
        export_maps(plan, maps, times_min=[60, 50])
    other = write_simulation(tmp_path / "other.h5", flood(origin=(429310.0, 5150850.0)))
    with pytest.raises(SimulationFileError, match=r"other.h5: grid: .* from \(429310.00, 5150850.00\).*; expected the grid "
                                                  r"of .*plan.h5"):
        export_maps(plan, maps, against=other)
    short = write_simulation(tmp_path / "short.h5", flood(frames=2))
    with pytest.raises(SimulationFileError, match=r"short.h5: times: 60 min is not one of its frames"):
        export_maps(plan, maps, against=short)
    assert not maps.exists()
    # maps of the file that exist are kept, all of them, unless forced; forced, they are all replaced, and those
    # the new set lacks removed, so that no map of an earlier export is left beside the new ones
    first = export_maps(plan, maps, times_min=[0])
    before = {p: p.read_bytes() for p in first}
    with pytest.raises(SimulationFileError, match=r"plan_depth_0min.tif: exists \(2 map\(s\) of plan in .*maps\); "
                                                  r"pass force=True \(--force\) to replace them all"):
        export_maps(plan, maps, times_min=[20])
    assert sorted(maps.iterdir()) == sorted(first) and all(p.read_bytes() == before[p] for p in first)
    other = write_simulation(tmp_path / "plan_6.h5", flood())  # maps of plan_6 are not plan's, nor the other way
    assert len(export_maps(other, maps, times_min=[0])) == 2
    assert [p.name for p in export_maps(plan, maps, times_min=[20], max_depth=False, force=True)] == ["plan_depth_20min.tif"]
    assert sorted(p.name for p in maps.iterdir()) == ["plan_6_depth_0min.tif", "plan_6_max_depth.tif",
                                                      "plan_depth_20min.tif"]
    (tmp_path / "a_file").write_text("")
    for folder in (tmp_path / "a_file", tmp_path / "a_file" / "maps"):
        with pytest.raises(SimulationFileError, match=r"out \(the folder for the maps\): .*a_file is a file, not a folder"):
            export_maps(plan, folder)
    # a grid whose CRS no GeoTIFF can place in metres or feet: the simulation file is named, nothing written
    geographic = write_simulation(tmp_path / "geographic.h5", flood(crs="EPSG:4326", origin=(-93.9, 46.5)))
    with pytest.raises(SimulationFileError, match=r"geographic.h5: crs: EPSG:4326 is a geographic CRS \(coordinates in "
                                                  r"degrees\).*; expected a projected CRS in metres or feet"):
        export_maps(geographic, tmp_path / "geographic_maps")
    assert not (tmp_path / "geographic_maps").exists()


def test_the_command_line_writes_maps_and_refuses_a_time_in_one_line(tmp_path):
    plan = write_simulation(tmp_path / "plan.h5", flood())

    def export(*args):
        return subprocess.run([sys.executable, "-m", "floodlib.data.export", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    done = export(plan, "--out", tmp_path / "maps", "--times", 20, 120, "--no-max")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote 2 GeoTIFF(s) to {tmp_path / 'maps'}: plan_depth_20min.tif, plan_depth_120min.tif"
    np.testing.assert_array_equal(opened(tmp_path / "maps" / "plan_depth_120min.tif")[0],
                                  read_simulation(plan).water_depth[6])
    refused = export(plan, "--out", tmp_path / "late", "--times", 140)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith("error: ") and "140 min is not one of its frames" in refused.stderr
    again = export(plan, "--out", tmp_path / "maps", "--times", 20)
    assert again.returncode == 2 and "exists (2 map(s) of plan in" in again.stderr
    folder = export(tmp_path, "--out", tmp_path / "x")
    assert folder.returncode == 2 and folder.stderr.strip() == f"error: {tmp_path}: file: is a folder; expected an HDF5 file"
    # "~" that the shell left as it is (after "=", or quoted) is the home folder, not a folder named "~"
    home = subprocess.run([sys.executable, "-m", "floodlib.data.export", "~/plan.h5", "--out=~/home_maps", "--times", "20"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert home.returncode == 0, home.stderr
    assert (tmp_path / "home_maps" / "plan_depth_20min.tif").is_file() and not (ROOT / "~").exists()


def test_a_disk_that_fills_up_leaves_no_map_and_says_so(tmp_path):
    """A file-size limit (ulimit -f, 64 kB) stops the writes as a full disk does: libtiff only warns, and the
    map read back whole is what tells; the command says so in one line and leaves no map and no temporary file."""
    noisy = flood(rows=200, cols=200, frames=2)
    noisy.water_depth[:] = np.random.default_rng(1).uniform(0, 3, noisy.water_depth.shape)  # 160 kB, incompressible
    plan = write_simulation(tmp_path / "plan.h5", noisy)
    out = tmp_path / "maps"
    done = subprocess.run(["bash", "-c", f"ulimit -f 64; exec {sys.executable} -m floodlib.data.export {plan} "
                                         f"--out {out} --times 0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "plan_depth_0min.tif: could not be written whole" in done.stderr and "Traceback" not in done.stderr
    assert not any(out.iterdir())


def test_maps_of_a_grid_larger_than_its_dem_say_where_the_terrain_is_mirrored(tmp_path):
    """A plan over a DEM smaller than its grid runs over mirror-tiled terrain; its maps reach past the DEM."""
    import warnings

    window = {"dem": "tile.tif", "row_offset": 0, "col_offset": 3, "mirrored_rows": True, "mirrored_cols": False}
    plan = write_simulation(tmp_path / "plan_1.h5", flood(extra={"terrain_source": window}))
    with pytest.warns(UserWarning, match=r"plan_1.h5: the plan's grid is larger than its DEM \(tile.tif\) along its "
                                         r"rows: its terrain is mirror-tiled there"):
        written = export_maps(plan, tmp_path / "maps")
    assert {opened(path)[5]["terrain_mirror_tiled"] for path in written} == {"rows"}
    inside = write_simulation(tmp_path / "plan_2.h5", flood(extra={"terrain_source": {**window, "mirrored_rows": False}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = export_maps(inside, tmp_path / "inside")
    assert all("terrain_mirror_tiled" not in opened(path)[5] for path in written)
