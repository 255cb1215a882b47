"""Terrain rasters a user should not get away with: wrong units, no georeference, too few pixels.

Each case asserts that the error is a SimulationFileError whose message names the file, the field, the
offending value and what was expected, and that nothing was written (not even a GDAL ``.aux.xml``).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest

from floodlib.data.geotiff import read_geotiff
from floodlib.data.simulate import ProjectSpec, simulate_project
from floodlib.data.store import SimulationFileError
from floodlib.data.terrain import DemSource, dem_terrain


def write_tif(path: Path, shape: tuple[int, int], *, crs=None, west=1000.0, north=2000.0, pixel=1.0,
              georeferenced=True, gcps=None) -> Path:
    """A float32 GeoTIFF of a tilted plane; ``georeferenced=False`` writes no geotransform at all."""
    import rasterio
    from rasterio.transform import Affine

    rows, cols = shape
    values = (100.0 + 0.01 * np.arange(cols)[None, :] - 0.02 * np.arange(rows)[:, None]).astype(np.float32)
    profile = dict(driver="GTiff", width=cols, height=rows, count=1, dtype="float32", crs=crs)
    if georeferenced:
        profile["transform"] = Affine(pixel, 0.0, west, 0.0, -pixel, north)
    if gcps is not None:
        profile["gcps"] = gcps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio warns when it writes a file without a georeference
        with rasterio.open(path, "w", **profile) as dataset:
            dataset.write(values, 1)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def three_control_points():
    from rasterio.control import GroundControlPoint

    return [GroundControlPoint(row=0, col=0, x=1000.0, y=2000.0), GroundControlPoint(row=0, col=9, x=1009.0, y=2000.0),
            GroundControlPoint(row=9, col=0, x=1000.0, y=1991.0)]


# id: (writer keyword arguments, shape, what the message must name besides the file)
UNREADABLE_AS_TERRAIN = {
    "geographic_wgs84_1_degree_pixels": (
        dict(crs="EPSG:4326", west=-93.5, north=46.5, pixel=1.0), (10, 10),
        ["crs: EPSG:4326", "geographic", "degrees", "expected a projected CRS in metres", "gdalwarp -t_srs"]),
    "geographic_nad83_1_arcsecond": (
        dict(crs="EPSG:4269", west=-93.5, north=46.5, pixel=1 / 3600), (10, 10),
        ["crs: EPSG:4269", "geographic", "expected a projected CRS in metres", "gdalwarp -t_srs"]),
    "clarkes_foot": (
        dict(crs="EPSG:2314"), (10, 10),
        ["crs: EPSG:2314", "Clarke's foot", "0.3047972654", "expected a projected CRS in metres"]),
    "links": (
        dict(crs="EPSG:3140"), (10, 10),
        ["crs: EPSG:3140", "'link'", "0.201168", "expected a projected CRS in metres"]),
    "yards": (
        dict(crs="EPSG:27291"), (10, 10),
        ["crs: EPSG:27291", "British yard", "expected a projected CRS in metres"]),
    "identity_transform_no_crs": (
        dict(georeferenced=False), (10, 10),
        ["geotransform: (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)", "not georeferenced", "expected a north-up geotransform",
         "gdal_translate -a_srs"]),
    "identity_transform_with_crs": (
        dict(crs="EPSG:26915", georeferenced=False), (10, 10),
        ["geotransform: (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)", "not georeferenced"]),
    "ground_control_points_only": (
        dict(crs="EPSG:26915", georeferenced=False, gcps="three"), (10, 10),
        ["geotransform: (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)", "not georeferenced", "3 ground control points", "gdalwarp"]),
    "one_pixel": (dict(crs="EPSG:26915"), (1, 1), ["size: 1x1 pixels", "expected at least 3x3 pixels"]),
    "two_by_two": (dict(crs="EPSG:26915"), (2, 2), ["size: 2x2 pixels", "expected at least 3x3 pixels"]),
    "two_pixel_strip": (dict(), (2, 500), ["size: 2x500 pixels", "expected at least 3x3 pixels"]),
}


@pytest.mark.parametrize("case", list(UNREADABLE_AS_TERRAIN))
def test_read_geotiff_refuses(tmp_path, case):
    kwargs, shape, expected = UNREADABLE_AS_TERRAIN[case]
    if kwargs.get("gcps") == "three":
        kwargs = {**kwargs, "gcps": three_control_points()}
    path = write_tif(tmp_path / f"{case}.tif", shape, **kwargs)
    before = snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error names the file; no stray warning alongside it
        with pytest.raises(SimulationFileError) as caught:
            read_geotiff(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message, (part, message)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["geographic_wgs84_1_degree_pixels", "clarkes_foot", "identity_transform_no_crs",
                                  "one_pixel", "two_by_two"])
def test_dem_terrain_refuses_what_read_geotiff_refuses(tmp_path, case):
    # Before, a 1x1 DEM became an 81x81 flat terrain and a 1-degree one a 1 m DEM.
    kwargs, shape, expected = UNREADABLE_AS_TERRAIN[case]
    path = write_tif(tmp_path / f"{case}.tif", shape, **kwargs)
    with pytest.raises(SimulationFileError, match=f"{case}.tif: ") as caught:
        dem_terrain(DemSource(str(path)), rows=8, cols=8)
    assert expected[0] in str(caught.value)


# id: (writer keyword arguments, DEM shape, grid rows and cols, what the message must name besides the file)
TOO_SMALL_FOR_THE_GRID = {
    "three_by_three": (dict(crs="EPSG:26915"), (3, 3), (8, 8),
                       ["size: 3x3 pixels", "8x8-cell grid", "81x81 terrain points", "at least 81x81 pixels"]),
    "smaller_than_the_smallest_grid": (dict(crs="EPSG:26915"), (50, 50), (8, 8),
                                       ["size: 50x50 pixels", "81x81 terrain points", "at least 81x81 pixels"]),
    "one_axis_short": (dict(), (81, 40), (8, 12),
                       ["size: 81x40 pixels", "8x12-cell grid", "81x121 terrain points", "at least 81x81 pixels"]),
    "just_short_for_a_larger_grid": (dict(crs="EPSG:26915"), (80, 200), (20, 20),
                                     ["size: 80x200 pixels", "20x20-cell grid", "201x201 terrain points"]),
    "feet_pixels_of_1_us_survey_foot": (dict(crs="EPSG:2236", pixel=1.0), (100, 100), (8, 8),
                                        ["pixel width: 0.3048006", "(1 US survey foot)", "needs a DEM at 1 m",
                                         "gdalwarp -tr 3.280833333 3.280833333 in the CRS's unit, the US survey foot"]),
    "metre_pixels_of_2_m": (dict(crs="EPSG:26915", pixel=2.0), (100, 100), (8, 8),
                            ["pixel width: 2.0 m", "needs a DEM at 1 m"]),
}


@pytest.mark.parametrize("case", list(TOO_SMALL_FOR_THE_GRID))
def test_dem_terrain_refuses_a_dem_that_cannot_hold_the_grid(tmp_path, case):
    kwargs, shape, (rows, cols), expected = TOO_SMALL_FOR_THE_GRID[case]
    path = write_tif(tmp_path / f"{case}.tif", shape, **kwargs)
    before = snapshot(tmp_path)
    with pytest.raises(SimulationFileError) as caught:
        dem_terrain(DemSource(str(path)), rows=rows, cols=cols)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message, (part, message)
    assert snapshot(tmp_path) == before


def dem_project(path: Path) -> ProjectSpec:
    return ProjectSpec(name="tiny_dem", terrain=DemSource(str(path)), n_plans=2, seed=3, rows=8, cols=8,
                       peak_discharge_m3s=(2.0, 4.0), time_to_peak_s=(300.0, 600.0),
                       event_duration_s=(900.0, 1200.0), duration_s=900.0, inflow_width_m=30.0)


@pytest.mark.parametrize("shape, pixel, expected", [
    ((1, 1), 1.0, "size: 1x1 pixels"),
    ((50, 50), 1.0, "size: 50x50 pixels"),
    ((100, 100), 2.0, "pixel width: 2.0 m"),
], ids=["one_pixel", "smaller_than_the_grid", "two_metre_pixels"])
def test_simulating_over_a_dem_too_small_writes_no_plan(tmp_path, shape, pixel, expected):
    # Refused once, while the plans are drawn, before any plan runs (not once per plan).
    path = write_tif(tmp_path / "small.tif", shape, crs="EPSG:26915", pixel=pixel)
    out = tmp_path / "out"
    with pytest.raises(SimulationFileError) as caught:
        simulate_project(dem_project(path), out, workers=1, progress=False)
    assert "small.tif" in str(caught.value) and expected in str(caught.value)
    assert str(caught.value).count(expected) == 1
    assert snapshot(tmp_path) == {"small.tif": path.read_bytes()}


@pytest.mark.parametrize("sentinel", [-9999.0, -32768.0, 99999.0])
def test_an_undeclared_nodata_value_is_refused_not_taken_for_terrain(tmp_path, sentinel):
    # Before, a -9999 block of a DEM without a nodata tag became a 10 km deep pit under the flood.
    import rasterio

    path = write_tif(tmp_path / "holes.tif", (100, 100), crs="EPSG:26915")
    with rasterio.open(path, "r+") as dataset:
        values = dataset.read(1)
        values[40:45, 60:70] = sentinel
        dataset.write(values, 1)
    before = snapshot(tmp_path)
    with pytest.raises(SimulationFileError) as caught:
        read_geotiff(path)
    message = str(caught.value)
    for part in (f"{path}: elevation: 50 of 10000 pixels of band 1 lie outside -1000..9000 m",
                 f"row 40, column 60, {sentinel:g} m", "declares none", f"gdal_edit.py -a_nodata {sentinel:g} {path}"):
        assert part in message, (part, message)
    assert snapshot(tmp_path) == before
    with rasterio.open(path, "r+") as dataset:  # declared, as the message says: those pixels are nodata
        dataset.nodata = sentinel
    assert int(np.isnan(read_geotiff(path).values).sum()) == 50


def test_a_truncated_geotiff_says_what_gdal_found(tmp_path):
    path = write_tif(tmp_path / "cut.tif", (300, 300), crs="EPSG:26915")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(SimulationFileError) as caught:
        read_geotiff(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: file: is not a readable GeoTIFF (")
    assert "previous exception" not in message and "expected 7200" in message  # GDAL's reason: a short strip


def with_nodata(path: Path, rows: slice, cols: slice) -> Path:
    """Declare -9999 the DEM's nodata and put it at ``rows`` x ``cols``."""
    import rasterio

    with rasterio.open(path, "r+") as dataset:
        values = dataset.read(1)
        values[rows, cols] = -9999.0
        dataset.write(values, 1)
        dataset.nodata = -9999.0
    return path


def test_windows_over_a_dems_nodata_margin_move_to_the_nearest_complete_one(tmp_path):
    """A surveyed DEM often has a nodata margin: each plan's window lies wholly on data, the drawn one where it
    is complete, else the nearest complete one (for a rectangular data area: the drawn offset clamped to it)."""
    from floodlib.data.simulate import plan_specs

    full = write_tif(tmp_path / "full.tif", (150, 150), crs="EPSG:26915")
    spec = dataclasses.replace(dem_project(full), n_plans=12, seed=5)
    drawn = [(p.terrain.row_offset, p.terrain.col_offset) for p in plan_specs(spec)]
    margin = with_nodata(write_tif(tmp_path / "margin.tif", (150, 150), crs="EPSG:26915"), slice(0, 150), slice(0, 30))
    margin = with_nodata(margin, slice(0, 10), slice(0, 150))  # data: rows 10..149, columns 30..149
    placed = [(p.terrain.row_offset, p.terrain.col_offset)
              for p in plan_specs(dataclasses.replace(spec, terrain=DemSource(str(margin))))]
    # 81 points a side: complete windows start at rows 10..69 and columns 30..69
    assert placed == [(min(max(r, 10), 69), min(max(c, 30), 69)) for r, c in drawn]
    assert any(p != d for p, d in zip(placed, drawn)) and any(p == d for p, d in zip(placed, drawn))
    for r, c in placed:  # and the simulator's own cut of each window finds no nodata
        assert np.isfinite(dem_terrain(DemSource(str(margin), row_offset=r, col_offset=c), rows=8, cols=8).elevation).all()
    out = tmp_path / "out"
    simulate_project(dataclasses.replace(spec, n_plans=2, terrain=DemSource(str(margin))), out, workers=1,
                     progress=False)
    assert sorted(p.name for p in (out / "tiny_dem").glob("*.h5")) == ["plan_000.h5", "plan_001.h5"]


@pytest.mark.parametrize("shape, rows, cols, grid", [
    ((100, 100), slice(0, 100), slice(40, 45), 8),    # a band of nodata leaves 40 and 55 columns: no 81 fit
    ((90, 90), slice(50, 51), slice(50, 51), 16),    # one pixel, in every window of a mirror-tiled grid
], ids=["no_room", "mirror_tiled"])
def test_a_dem_with_no_window_wholly_on_data_is_refused_once_before_any_plan(tmp_path, shape, rows, cols, grid):
    path = with_nodata(write_tif(tmp_path / "holes.tif", shape, crs="EPSG:26915"), rows, cols)
    before = snapshot(tmp_path)
    spec = dataclasses.replace(dem_project(path), n_plans=3, rows=grid, cols=grid)
    with pytest.raises(SimulationFileError) as caught:
        simulate_project(spec, tmp_path / "out", workers=1, progress=False)
    need = grid * 10 + 1
    missing = (rows.stop - rows.start) * (cols.stop - cols.start)
    assert str(caught.value) == (
        f"{path}: elevation: no window of {need}x{need} points (the {grid}x{grid}-cell grid of project 'tiny_dem') "
        f"lies wholly on data: {missing} of {shape[0] * shape[1]} pixels are nodata (first at row {rows.start}, "
        f"column {cols.start}); expected a DEM with a complete area that large (a smaller grid, or the DEM's holes "
        "filled, e.g. gdal_fillnodata.py)")
    assert snapshot(tmp_path) == before


def test_a_project_takes_its_dem_as_a_path_object_and_refuses_an_offset(tmp_path):
    """pathlib.Path as a user writes it works like a str (it used to fail writing the first plan's spec); an
    offset on a project's DEM would be overwritten by every plan's own window, so it is refused."""
    import json

    from floodlib.data.simulate import plan_specs

    path = write_tif(tmp_path / "dem.tif", (100, 100), crs="EPSG:26915")
    spec = dataclasses.replace(dem_project(path), terrain=DemSource(path))
    assert spec.terrain.path == str(path)
    assert json.loads(json.dumps(plan_specs(spec)[0].to_dict()))["terrain"]["path"] == str(path)
    with pytest.raises(ValueError, match=r"^ProjectSpec.terrain: row_offset=10, col_offset=0: each plan of a project "
                                         r"draws its own window of the DEM.*gdal_translate -srcwin"):
        dataclasses.replace(dem_project(path), terrain=DemSource(str(path), row_offset=10))
    with pytest.raises(ValueError, match=r"^DemSource.row_offset: -1; expected a whole number >= 0$"):
        DemSource(str(path), row_offset=-1)


def test_the_pixel_size_the_refusal_names_is_one_the_simulator_takes(tmp_path):
    """The gdalwarp -tr of a refused DEM in feet has the digits to pass the 1 m check (3.28083 did not)."""
    import re

    refused = write_tif(tmp_path / "one_foot.tif", (100, 100), crs="EPSG:2236", pixel=1.0)
    with pytest.raises(SimulationFileError) as caught:
        dem_terrain(DemSource(str(refused)), rows=8, cols=8)
    step = float(re.search(r"gdalwarp -tr ([\d.]+) ", str(caught.value)).group(1))
    resampled = write_tif(tmp_path / "resampled.tif", (300, 300), crs="EPSG:2236", pixel=step)
    assert dem_terrain(DemSource(str(resampled)), rows=8, cols=8).elevation.shape == (81, 81)
