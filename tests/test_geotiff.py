"""Terrain rasters: real GeoTIFF DEMs and small hand-made ones with known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from floodlib.data.geotiff import Raster, read_geotiff, sample_raster, terrain_points
from floodlib.data.store import SimulationFileError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared sample data not found at {SHARED}")


def write_geotiff(path: Path, values: np.ndarray, *, x0=1000.0, y0=2000.0, dx=1.0, nodata=None, compress=None,
                  crs="EPSG:26915"):
    import rasterio
    from rasterio.transform import Affine

    profile = dict(driver="GTiff", width=values.shape[1], height=values.shape[0], count=1, dtype="float32",
                   crs=crs, transform=Affine(dx, 0.0, x0, 0.0, -dx, y0), nodata=nodata)
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values.astype(np.float32), 1)
    return path


@needs_shared
def test_reads_the_minnesota_lidar_tile():
    raster = read_geotiff(SHARED / "dem" / "lidar_pkg_dem_1m_minnesota.tif")
    assert raster.values.shape == (400, 400)
    assert raster.values.dtype == np.float32
    assert raster.dx == pytest.approx(1.0) and raster.dy == pytest.approx(1.0)
    assert raster.crs == "EPSG:26915"
    assert raster.units_factor == 1.0 and raster.source_units == "metre"
    assert np.nanmin(raster.values) == pytest.approx(379.66, abs=0.01)
    assert np.nanmax(raster.values) == pytest.approx(410.76, abs=0.01)
    west, south, east, north = raster.bounds
    assert east - west == pytest.approx(400.0) and north - south == pytest.approx(400.0)


@needs_shared
def test_reads_the_deflate_compressed_muncie_terrain():
    raster = read_geotiff(SHARED / "dem" / "pyhmt2d_muncie_subterrain_5m_deflate.tif")
    assert raster.values.shape == (821, 1265)
    assert raster.dx == pytest.approx(5.0531, abs=1e-4)
    assert raster.crs == "EPSG:6458"
    assert raster.units_factor == 1.0 and raster.source_units == "metre"
    finite = raster.values[np.isfinite(raster.values)]
    # The nodata tag (-3.4e38) never leaks through as an elevation.
    assert finite.min() == pytest.approx(277.2, abs=0.1) and finite.max() == pytest.approx(306.3, abs=0.1)


def test_sampling_at_pixel_centres_and_between_them(tmp_path):
    values = np.arange(20, dtype=np.float32).reshape(4, 5) * 2.0
    raster = read_geotiff(write_geotiff(tmp_path / "t.tif", values, compress="lzw"))
    assert_allclose(raster.values, values)
    # Pixel (1, 2) has its centre at x = 1000 + 2.5, y = 2000 - 1.5.
    assert_allclose(sample_raster(raster, x=np.array([1002.5]), y=np.array([1998.5])), [values[1, 2]])
    # Half-way between pixels (1, 2) and (2, 3): the mean of the four neighbours.
    mid = sample_raster(raster, x=np.array([1003.0]), y=np.array([1998.0]))
    assert_allclose(mid, [values[1:3, 2:4].mean()])
    x, y = terrain_points(origin_x=1000.5, origin_y=1999.5, spacing=1.0, shape=(4, 5))
    assert_allclose(sample_raster(raster, x=x, y=y), values)


def test_sampling_outside_or_on_nodata_is_a_clear_error(tmp_path):
    values = np.full((10, 10), 5.0, dtype=np.float32)
    values[6, 7] = -9999.0
    raster = read_geotiff(write_geotiff(tmp_path / "holes.tif", values, nodata=-9999.0))
    assert np.isnan(raster.values[6, 7])
    with pytest.raises(SimulationFileError, match=r"holes.tif: terrain: .* does not cover the grid: 3 of 12 points"):
        x, y = terrain_points(origin_x=1008.0, origin_y=1999.0, spacing=1.0, shape=(3, 4))
        sample_raster(raster, x=x, y=y)
    with pytest.raises(SimulationFileError, match=r"holes.tif: terrain: \d+ of 9 points fall on nodata/NaN cells"):
        x, y = terrain_points(origin_x=1006.5, origin_y=1993.5, spacing=1.0, shape=(3, 3))
        sample_raster(raster, x=x, y=y)


def test_missing_or_unreadable_files(tmp_path):
    with pytest.raises(SimulationFileError, match="nowhere.tif: file: does not exist"):
        read_geotiff(tmp_path / "nowhere.tif")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(SimulationFileError, match="broken.tif: file: is not a readable GeoTIFF"):
        read_geotiff(broken)
    raster = Raster(values=np.zeros((2, 2), np.float32), x0=0, y0=0, dx=1, dy=1)
    assert raster.bounds == (0, -2, 2, 0)


@pytest.mark.parametrize("crs, factor, units", [
    ("EPSG:2222", 0.3048, "international foot"),  # NAD83 / Arizona East (ft)
    ("EPSG:2236", 1200 / 3937, "US survey foot"),  # NAD83 / Florida East (ftUS)
], ids=["international_foot", "us_survey_foot"])
def test_a_raster_in_feet_is_read_in_metres(tmp_path, crs, factor, units):
    values = 300.0 + np.arange(30, dtype=np.float32).reshape(5, 6) * 0.5  # elevations in the same feet
    raster = read_geotiff(write_geotiff(tmp_path / "feet.tif", values, x0=640000.0, y0=1500000.0, dx=3.0, crs=crs))
    assert raster.units_factor == factor and raster.source_units == units
    assert raster.crs == crs
    assert raster.dx == pytest.approx(3.0 * factor, rel=1e-15) and raster.dy == pytest.approx(3.0 * factor, rel=1e-15)
    assert raster.x0 == pytest.approx(640000.0 * factor, rel=1e-15)
    assert raster.y0 == pytest.approx(1500000.0 * factor, rel=1e-15)
    assert raster.values.dtype == np.float32
    np.testing.assert_array_equal(raster.values, (values.astype(np.float64) * factor).astype(np.float32))
    # Sampling takes metres: pixel (2, 3)'s centre, converted, gives its elevation in metres.
    x = np.array([(640000.0 + 3.5 * 3.0) * factor])
    y = np.array([(1500000.0 - 2.5 * 3.0) * factor])
    assert_allclose(sample_raster(raster, x=x, y=y), [values[2, 3] * factor], rtol=1e-6)


@pytest.mark.parametrize("crs, band_unit, horizontal, vertical, vertical_m", [
    ("EPSG:26915+6360", None, 1.0, "US survey foot", 1200 / 3937),  # UTM 15N (m) + NAVD88 height (ftUS)
    ("EPSG:26915+8228", None, 1.0, "international foot", 0.3048),  # UTM 15N (m) + NAVD88 height (ft)
    ("EPSG:26915+5703", None, 1.0, "metre", 1.0),  # UTM 15N (m) + NAVD88 height (m)
    ("EPSG:2236+5703", None, 1200 / 3937, "metre", 1.0),  # Florida East (ftUS) + NAVD88 height (m)
    ("EPSG:26915", "ft", 1.0, "international foot", 0.3048),  # the band's unit, no vertical CRS
    (None, "US survey foot", 1.0, "US survey foot", 1200 / 3937),  # no CRS: coordinates in metres, heights stated
], ids=["utm-navd88-ftus", "utm-navd88-ft", "utm-navd88-m", "ftus-navd88-m", "band-unit-ft", "no-crs-band-unit-ftus"])
def test_elevations_are_converted_from_the_unit_the_file_states_for_them(tmp_path, crs, band_unit, horizontal,
                                                                          vertical, vertical_m):
    import rasterio
    from rasterio.crs import CRS

    values = 250.0 + np.arange(30, dtype=np.float32).reshape(5, 6) * 0.25
    path = write_geotiff(tmp_path / "dem.tif", values, x0=640000.0, y0=1500000.0, dx=2.0,
                         crs=CRS.from_user_input(crs) if crs else None)
    if band_unit:
        with rasterio.open(path, "r+") as dataset:
            dataset.set_band_unit(1, band_unit)
    raster = read_geotiff(path)
    assert (raster.vertical_units, raster.vertical_stated) == (vertical, True)
    assert raster.vertical_factor == pytest.approx(vertical_m, rel=1e-15)
    np.testing.assert_array_equal(raster.values, (values.astype(np.float64) * raster.vertical_factor).astype(np.float32))
    assert raster.units_factor == pytest.approx(horizontal, rel=1e-12)  # the coordinates keep their own unit
    assert raster.dx == pytest.approx(2.0 * horizontal, rel=1e-12)
    assert raster.x0 == pytest.approx(640000.0 * horizontal, rel=1e-12)


def test_an_elevation_unit_that_is_no_length_floodlib_converts_is_refused(tmp_path):
    import rasterio

    path = write_geotiff(tmp_path / "dem.tif", np.ones((4, 4), np.float32))
    with rasterio.open(path, "r+") as dataset:
        dataset.set_band_unit(1, "decimetre")
    with pytest.raises(SimulationFileError, match=r"dem.tif: vertical unit \(band 1's unit\): 'decimetre' is not a "
                                                  r"unit of elevation floodlib converts; expected metre, foot or US"):
        read_geotiff(path)


def test_a_dem_in_utm_metres_with_heights_in_us_survey_feet_makes_metre_terrain(tmp_path):
    from rasterio.crs import CRS

    from floodlib.data.terrain import DemSource, dem_terrain

    foot = 1200 / 3937
    values = (900.0 + np.add.outer(np.arange(90.0), np.arange(90.0)) * 0.2).astype(np.float32)  # ftUS
    path = write_geotiff(tmp_path / "navd88ftus.tif", values, x0=500000.0, y0=5000000.0, dx=1.0,
                         crs=CRS.from_user_input("EPSG:26915+6360"))
    terrain = dem_terrain(DemSource(str(path), row_offset=1, col_offset=2), rows=8, cols=8)
    assert_allclose(terrain.elevation, values[1:82, 2:83].astype(np.float64) * foot, rtol=1e-7)
    assert terrain.origin_x == pytest.approx(500002.5) and terrain.origin_y == pytest.approx(4999998.5)
    assert "source_units" not in terrain.description  # the coordinates were metres already
    assert terrain.description["vertical_units"] == "US survey foot"
    assert terrain.description["vertical_factor"] == foot


def test_a_dem_in_us_survey_feet_at_1_m_pixels_makes_metre_terrain(tmp_path):
    from floodlib.data.terrain import DemSource, dem_terrain

    foot = 1200 / 3937
    values = (1000.0 + np.add.outer(np.arange(90.0), np.arange(90.0)) * 0.1).astype(np.float32)
    path = write_geotiff(tmp_path / "ftus.tif", values, x0=500000.0, y0=800000.0, dx=1 / foot, crs="EPSG:2236")
    terrain = dem_terrain(DemSource(str(path), row_offset=2, col_offset=3), rows=8, cols=8)
    assert terrain.elevation.shape == (81, 81)
    assert_allclose(terrain.elevation, values[2:83, 3:84].astype(np.float64) * foot, rtol=1e-7)
    assert terrain.origin_x == pytest.approx(500000.0 * foot + 3.5, rel=1e-12)
    assert terrain.origin_y == pytest.approx(800000.0 * foot - 2.5, rel=1e-12)
    assert terrain.description["source_units"] == "US survey foot"
    assert terrain.description["units_factor"] == foot


def test_a_georeferenced_raster_without_crs_is_taken_as_metres(tmp_path):
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    raster = read_geotiff(write_geotiff(tmp_path / "local.tif", values, x0=0.0, y0=400.0, dx=1.0, crs=None))
    assert raster.crs is None and raster.units_factor == 1.0 and raster.source_units == "metre"
    assert (raster.x0, raster.y0, raster.dx, raster.dy) == (0.0, 400.0, 1.0, 1.0)
    assert_allclose(raster.values, values)


def test_the_smallest_raster_read_is_3_by_3(tmp_path):
    values = np.arange(9, dtype=np.float32).reshape(3, 3)
    assert_allclose(read_geotiff(write_geotiff(tmp_path / "three.tif", values)).values, values)
