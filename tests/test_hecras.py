"""HEC-RAS 2D plan results → simulation store, on the real plan files in ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from floodlib.data.hecras import convert_hecras, hecras_names, list_2d_areas, read_hecras
from floodlib.data.store import SimulationFileError, read_simulation

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BACKWATER = DATA / "hecras" / "backwater_curve.p01.hdf"
MUNCIE = DATA / "hecras" / "Muncie2DOnly_SI.p01.hdf"
BALD_EAGLE = DATA / "hecras" / "BaldEagleDamBrk.p18.timeseries.hdf"
MUNCIE_DEM = DATA / "dem" / "pyhmt2d_muncie_subterrain_5m_deflate.tif"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")

SERIES = "Results/Unsteady/Output/Output Blocks/Base Output/Unsteady Time Series"
BACKWATER_DEPTH = f"{SERIES}/2D Flow Areas/channel/Depth"
BACKWATER_CENTRES = "Geometry/2D Flow Areas/channel/Cells Center Coordinate"
BACKWATER_CELLS = 2400
MUNCIE_CELLS = 2459
# The backwater grid box (from the file's area 'Extents'): 200 columns x 12 rows of 50 m cells.
BACKWATER_WEST, BACKWATER_NORTH = 259601.0, 4521337.0


def cell_positions(centres: np.ndarray, sim) -> tuple[np.ndarray, np.ndarray]:
    """Grid (row, col) of each cell centre, computed independently of the reader."""
    half = sim.cell_size_m / 2
    rows = np.round((sim.origin_y - half - centres[:, 1]) / sim.cell_size_m).astype(int)
    cols = np.round((centres[:, 0] - sim.origin_x - half) / sim.cell_size_m).astype(int)
    return rows, cols


def read_cells(path: Path, area: str, count: int) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        series = h5[f"{SERIES}/2D Flow Areas/{area}"]
        geometry = h5[f"Geometry/2D Flow Areas/{area}"]
        return {
            "depth": series["Depth"][:, :count],
            "surface": series["Water Surface"][:, :count],
            "centres": geometry["Cells Center Coordinate"][:count],
            "minimum": geometry["Cells Minimum Elevation"][:count],
            "projection": h5.attrs["Projection"].decode(),
        }


def edited_copy(tmp_path: Path, source: Path, edit) -> Path:
    """A copy of a real plan file in tmp_path, changed by ``edit(h5)``."""
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    with h5py.File(copy, "r+") as h5:
        edit(h5)
    return copy


def write_geotiff(path: Path, values: np.ndarray, *, west: float, north: float, pixel: float, crs, nodata=None) -> Path:
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
                       dtype="float32", crs=crs, transform=Affine(pixel, 0, west, 0, -pixel, north),
                       nodata=nodata) as dataset:
        dataset.write(values.astype(np.float32), 1)
    return path


def plane(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A tilted plane (m): bilinear sampling reproduces it exactly, so any misplacement shows. It lies within a
    few metres of the plan's own cell elevations (about 0 m), as the DEM a plan was built on does."""
    return 0.001 * (x - BACKWATER_WEST - 5000.0) - 0.002 * (y - BACKWATER_NORTH)


def backwater_dem(tmp_path: Path, *, west=BACKWATER_WEST - 20, east=BACKWATER_WEST + 10020, crs=None,
                  hole=False) -> Path:
    """A 5 m plane DEM over (part of) the backwater grid box, 20 m margin on the other sides."""
    pixel, north, south = 5.0, BACKWATER_NORTH + 20, BACKWATER_NORTH - 600 - 20
    cols, rows = int(round((east - west) / pixel)), int(round((north - south) / pixel))
    xs = west + pixel * (np.arange(cols) + 0.5)
    ys = north - pixel * (np.arange(rows) + 0.5)
    values = plane(*np.meshgrid(xs, ys))
    if hole:
        values[60:64, 900:904] = -9999.0
    crs = crs if crs is not None else read_cells(BACKWATER, "channel", BACKWATER_CELLS)["projection"]
    return write_geotiff(tmp_path / "dem.tif", values, west=west, north=north, pixel=pixel, crs=crs,
                         nodata=-9999.0 if hole else None)


def assert_fails(tmp_path: Path, plan: Path, *fragments: str, **kwargs) -> str:
    """convert_hecras must raise SimulationFileError naming the file and each fragment, and write nothing."""
    out = tmp_path / "store" / "plan.h5"
    with pytest.raises(SimulationFileError) as info:
        convert_hecras(plan, out, **kwargs)
    message = str(info.value)
    assert plan.name in message or any(f.endswith(".tif") for f in fragments), message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())
    return message


@pytest.fixture(scope="module")
def backwater():
    return read_hecras(BACKWATER)


@pytest.fixture(scope="module")
def muncie():
    return read_hecras(MUNCIE, terrain=MUNCIE_DEM)


def test_list_2d_areas_of_each_file():
    assert list_2d_areas(BACKWATER) == ["channel"]
    assert list_2d_areas(MUNCIE) == ["Muncie2D"]
    assert list_2d_areas(BALD_EAGLE) == ["BaldEagleCr", "Upper 2D Area"]


def test_hecras_names_are_the_ones_read_hecras_gives_without_reading_the_results(backwater, muncie):
    assert hecras_names(BACKWATER) == (backwater.project, backwater.plan)
    assert hecras_names(MUNCIE) == (muncie.project, muncie.plan)
    assert hecras_names(MUNCIE, project="indiana", plan="p01") == ("indiana", "p01")
    # A plan of several areas: each area's plan name carries the area's (this file's areas cannot be read whole).
    project, plan = hecras_names(BALD_EAGLE, area="Upper 2D Area")
    assert project == "BaldEagleDamBrk" and plan.endswith(" (Upper 2D Area)") and len(plan) > len(" (Upper 2D Area)")
    with pytest.raises(SimulationFileError, match="'BaldEagleCr'.*'Upper 2D Area'"):
        hecras_names(BALD_EAGLE)


def test_backwater_grid_times_and_attributes(backwater):
    cells = read_cells(BACKWATER, "channel", BACKWATER_CELLS)
    # The channel runs west-east: 12 rows (north-south) by 200 columns.
    assert backwater.water_depth.shape == (13, 12, 200)
    assert backwater.water_depth.dtype == np.float32 and backwater.terrain.dtype == np.float32
    assert backwater.cell_size_m == 50.0
    assert backwater.terrain_spacing_m == 5.0
    assert backwater.terrain.shape == (121, 2001)
    assert backwater.output_interval_s == 3600.0
    assert_array_equal(backwater.times_s, np.arange(13) * 3600.0)
    assert np.isfinite(backwater.water_depth).all()
    assert (backwater.origin_x, backwater.origin_y) == (BACKWATER_WEST, BACKWATER_NORTH)
    assert backwater.crs == cells["projection"]
    assert backwater.project == "backwater_curve"
    assert backwater.plan == "backwater"
    assert backwater.source.startswith("HEC-RAS 5.0.7 backwater_curve.p01.hdf area channel")
    assert "Cells Minimum Elevation" in backwater.source
    assert backwater.event is None


def test_backwater_depths_sit_on_their_cell_centres(backwater):
    cells = read_cells(BACKWATER, "channel", BACKWATER_CELLS)
    rows, cols = cell_positions(cells["centres"], backwater)
    assert_array_equal(backwater.water_depth[:, rows, cols], cells["depth"])
    # Row 0 is the northern edge: the northernmost centres land there.
    assert_array_equal(np.unique(rows[cells["centres"][:, 1] == cells["centres"][:, 1].max()]), [0])


def test_terrain_without_dem_takes_each_cells_minimum_elevation(backwater):
    cells = read_cells(BACKWATER, "channel", BACKWATER_CELLS)
    rows, cols = cell_positions(cells["centres"], backwater)
    r = backwater.terrain_ratio
    # A terrain point strictly inside a cell is nearest to that cell's centre.
    assert_array_equal(backwater.terrain[rows * r + r // 2, cols * r + r // 2], cells["minimum"])
    assert_array_equal(backwater.terrain[rows * r + 1, cols * r + r - 1], cells["minimum"])


def test_muncie_irregular_area_on_a_40_m_lattice(muncie):
    cells = read_cells(MUNCIE, "Muncie2D", MUNCIE_CELLS)
    assert muncie.water_depth.shape == (7, 71, 81)
    assert muncie.cell_size_m == 40.0
    assert muncie.terrain.shape == (711, 811)
    assert muncie.output_interval_s == 1800.0
    inside = np.isfinite(muncie.water_depth[0])
    assert inside.sum() == MUNCIE_CELLS
    assert_allclose(inside.mean(), 0.4276, atol=1e-4)
    rows, cols = cell_positions(cells["centres"], muncie)
    expected_inside = np.zeros_like(inside)
    expected_inside[rows, cols] = True
    assert_array_equal(inside, expected_inside)
    assert_allclose([muncie.origin_x, muncie.origin_y],
                    [cells["centres"][:, 0].min() - 20, cells["centres"][:, 1].max() + 20], rtol=0, atol=1e-6)
    assert_allclose(muncie.water_depth[:, rows, cols], cells["surface"] - cells["minimum"], rtol=0, atol=4e-5)
    assert muncie.crs is not None and "Indiana_East" in muncie.crs
    assert muncie.plan == "2D Area Only"


def test_muncie_terrain_from_the_dem(muncie):
    cells = read_cells(MUNCIE, "Muncie2D", MUNCIE_CELLS)
    assert muncie.terrain_spacing_m == 4.0
    assert 277.2 <= muncie.terrain.min() and muncie.terrain.max() <= 306.4
    rows, cols = cell_positions(cells["centres"], muncie)
    at_centres = muncie.terrain[rows * 10 + 5, cols * 10 + 5]
    # HEC-RAS's cell minimum is the lowest terrain in the cell, so the DEM at a centre is never below it.
    assert (at_centres >= cells["minimum"] - 1e-3).all()
    assert np.median(at_centres - cells["minimum"]) < 1.0
    assert "pyhmt2d_muncie_subterrain_5m_deflate.tif (5.053 m pixels) sampled bilinearly" in muncie.source
    assert muncie.extra["dem_pixel_m"] == pytest.approx(5.0531, abs=1e-4)  # coarser than the 4 m terrain spacing


def test_a_dem_far_from_the_plans_own_cell_elevations_is_refused(tmp_path):
    """Muncie's DEM with its elevations in feet but declared as metres: 3.28 times too high, 600 m off."""
    import rasterio

    with rasterio.open(MUNCIE_DEM) as source:
        profile, values = source.profile, source.read(1, masked=True)
    feet = tmp_path / "muncie_feet.tif"
    with rasterio.open(feet, "w", **profile) as target:
        target.write((values * 3.28084).filled(profile["nodata"]).astype(np.float32), 1)
    message = assert_fails(tmp_path, MUNCIE, "muncie_feet.tif: elevation: at the centres of Muncie2DOnly_SI.p01.hdf's "
                           "cells (area Muncie2D) the DEM lies a median +6", "Cells Minimum Elevation: 27",
                           "expected within 10 m", "other vertical units (feet read as metres)", terrain=feet)
    assert "the DEM there 9" in message


def test_dem_is_sampled_at_the_right_places(tmp_path):
    sim = read_hecras(BACKWATER, terrain=backwater_dem(tmp_path), terrain_ratio=5)
    assert sim.terrain.shape == (61, 1001) and sim.terrain_spacing_m == 10.0
    xs = BACKWATER_WEST + 10.0 * np.arange(1001)
    ys = BACKWATER_NORTH - 10.0 * np.arange(61)
    assert_allclose(sim.terrain, plane(*np.meshgrid(xs, ys)), rtol=0, atol=1e-4)


def test_round_trip_through_the_store(tmp_path):
    out = convert_hecras(MUNCIE, tmp_path / "muncie.h5", terrain=MUNCIE_DEM, project="indiana", plan="p01")
    assert out == tmp_path / "muncie.h5"
    direct = read_hecras(MUNCIE, terrain=MUNCIE_DEM, project="indiana", plan="p01")
    stored = read_simulation(out)
    assert_array_equal(stored.water_depth, direct.water_depth)
    assert_array_equal(stored.terrain, direct.terrain)
    for name in ("project", "plan", "cell_size_m", "terrain_spacing_m", "output_interval_s", "source",
                 "origin_x", "origin_y", "crs", "event", "extra"):
        assert getattr(stored, name) == getattr(direct, name), name
    assert stored.project == "indiana" and stored.plan == "p01"
    assert stored.extra == {"hecras_first_output": "1900-01-02 00:00:00", "source_units": "SI",
                            "source_units_from": "Units System", "dem_pixel_m": direct.extra["dem_pixel_m"]}


def test_ghost_cells_are_ignored(tmp_path, backwater):
    def spoil_ghosts(h5):
        h5[BACKWATER_DEPTH][:, BACKWATER_CELLS:] = np.nan
        h5[BACKWATER_CENTRES][BACKWATER_CELLS:] = 1.234

    sim = read_hecras(edited_copy(tmp_path, BACKWATER, spoil_ghosts))
    assert_array_equal(sim.water_depth, backwater.water_depth)


def test_depth_from_water_surface_when_depth_is_absent(tmp_path, backwater):
    def drop_depth(h5):
        del h5[BACKWATER_DEPTH]

    sim = read_hecras(edited_copy(tmp_path, BACKWATER, drop_depth))
    assert_allclose(sim.water_depth, backwater.water_depth, rtol=0, atol=4e-5)
    assert "Water Surface - Cells Minimum Elevation" in sim.source


def test_tiny_negative_depths_are_rounding(tmp_path):
    def nudge(h5):
        h5[BACKWATER_DEPTH][2, 5] = -5e-4

    sim = read_hecras(edited_copy(tmp_path, BACKWATER, nudge))
    cells = read_cells(BACKWATER, "channel", BACKWATER_CELLS)
    rows, cols = cell_positions(cells["centres"], sim)
    assert sim.water_depth[2, rows[5], cols[5]] == 0.0


def test_bald_eagle_has_no_cell_centres(tmp_path):
    message = assert_fails(tmp_path, BALD_EAGLE, "BaldEagleCr", "Cells Center Coordinate", "no cell centres",
                           area="BaldEagleCr")
    assert "grid" in message


def test_several_areas_need_a_choice(tmp_path):
    assert_fails(tmp_path, BALD_EAGLE, "'BaldEagleCr'", "'Upper 2D Area'", "area=")


def test_unknown_area_lists_the_valid_ones(tmp_path):
    assert_fails(tmp_path, BACKWATER, "'river'", "'channel'", area="river")


def test_missing_file(tmp_path):
    assert_fails(tmp_path, tmp_path / "absent.p01.hdf", "does not exist")
    with pytest.raises(SimulationFileError, match="does not exist"):
        list_2d_areas(tmp_path / "absent.p01.hdf")


def test_truncated_and_non_hdf5_files(tmp_path):
    truncated = tmp_path / "truncated.p01.hdf"
    truncated.write_bytes(BACKWATER.read_bytes()[: BACKWATER.stat().st_size // 2])
    message = assert_fails(tmp_path, truncated, "file")
    assert "HDF5" in message or "truncated" in message
    text = tmp_path / "notes.p01.hdf"
    text.write_text("not an HDF5 file\n")
    assert_fails(tmp_path, text, "is not a readable HDF5 file")


def test_corrupt_depth_chunk(tmp_path):
    # The file opens and its structure is intact, but the gzip-compressed Depth chunk is garbage.
    with h5py.File(BACKWATER, "r") as h5:
        chunk = h5[BACKWATER_DEPTH].id.get_chunk_info(0)
    data = bytearray(BACKWATER.read_bytes())
    data[chunk.byte_offset: chunk.byte_offset + chunk.size] = b"\x5a" * chunk.size
    corrupt = tmp_path / BACKWATER.name
    corrupt.write_bytes(bytes(data))
    assert_fails(tmp_path, corrupt, "file: could not be read", "truncated or corrupt")


def test_missing_depth_datasets(tmp_path):
    def drop(h5):
        del h5[BACKWATER_DEPTH]
        del h5[f"{SERIES}/2D Flow Areas/channel/Water Surface"]

    assert_fails(tmp_path, edited_copy(tmp_path, BACKWATER, drop), BACKWATER_DEPTH, "Water Surface",
                 "Cell Invert Depth")


def test_centre_off_the_lattice(tmp_path):
    x, y = read_cells(BACKWATER, "channel", BACKWATER_CELLS)["centres"][37]

    def nudge(h5):
        h5[BACKWATER_CENTRES][37, 0] = x + 7.0

    assert_fails(tmp_path, edited_copy(tmp_path, BACKWATER, nudge), BACKWATER_CENTRES, "cell 37",
                 f"({x + 7:.3f}, {y:.3f})", "7.000 m off")


def test_rectangular_cells_are_refused(tmp_path):
    def squash(h5):
        centres = h5[BACKWATER_CENTRES][()]
        centres[:, 1] = BACKWATER_NORTH + (centres[:, 1] - BACKWATER_NORTH) / 2
        h5[BACKWATER_CENTRES][...] = centres

    assert_fails(tmp_path, edited_copy(tmp_path, BACKWATER, squash), BACKWATER_CENTRES,
                 "50 m apart in x but 25 m apart in y")


def test_nan_depth(tmp_path):
    def spoil(h5):
        h5[BACKWATER_DEPTH][3, 17] = np.nan

    assert_fails(tmp_path, edited_copy(tmp_path, BACKWATER, spoil), BACKWATER_DEPTH, "frame 3, cell 17", "nan")


def test_negative_depth(tmp_path):
    def spoil(h5):
        h5[BACKWATER_DEPTH][4, 100] = -0.5

    assert_fails(tmp_path, edited_copy(tmp_path, BACKWATER, spoil), BACKWATER_DEPTH, "frame 4, cell 100", "-0.5",
                 ">= 0 m")


def test_uneven_output_times(tmp_path):
    def shift(h5):
        h5[f"{SERIES}/Time Date Stamp (ms)"][5] = b"30DEC1899 05:10:00:000"

    assert_fails(tmp_path, edited_copy(tmp_path, BACKWATER, shift), "Time Date Stamp (ms)", "not evenly spaced",
                 "4200 s between outputs 4 and 5")


def test_last_output_off_the_interval_is_dropped(tmp_path, backwater):
    # The run ended 20 min after its 11:00 output: HEC-RAS writes that end as a last, shorter-spaced output.
    def end_early(h5):
        h5[f"{SERIES}/Time Date Stamp (ms)"][12] = b"30DEC1899 11:20:00:000"

    plan = edited_copy(tmp_path, BACKWATER, end_early)
    with pytest.warns(UserWarning, match=r"backwater_curve\.p01\.hdf: .*Time Date Stamp \(ms\): the last output, "
                                         r"40800 s after the first \(1899-12-30 11:20:00\), is 1200 s after the one "
                                         r"before it, off the 3600 s output interval.*dropped"):
        sim = read_hecras(plan)
    assert sim.output_interval_s == 3600.0
    assert_array_equal(sim.water_depth, backwater.water_depth[:12])
    assert sim.extra["hecras_dropped_output_s"] == 40800.0


def test_a_terrain_ratio_that_would_exhaust_memory_is_refused_at_once(tmp_path):
    # terrain_ratio=1000 once asked for 12001 x 200001 points (9.6 GB) and was killed for memory.
    message = assert_fails(tmp_path, BACKWATER, "terrain_ratio", "1000", "12,001 x 200,001 = 2,400,212,001 points",
                           "area 'channel'", "200,000,000", "terrain_ratio <= 288", terrain_ratio=1000)
    assert "9.6 GB" in message
    # 289 is the first ratio past the limit (3469 x 57801 points); 288 (3457 x 57601) is within it.
    assert_fails(tmp_path, BACKWATER, "terrain_ratio", "289", "3,469 x 57,801", terrain_ratio=289)


def test_dem_that_does_not_cover_the_grid(tmp_path):
    dem = backwater_dem(tmp_path, east=BACKWATER_WEST + 5000)
    assert_fails(tmp_path, BACKWATER, "dem.tif", "does not cover the grid", "the terrain must cover the whole box",
                 terrain=dem)


def test_dem_with_nodata_under_the_grid(tmp_path):
    dem = backwater_dem(tmp_path, hole=True)
    assert_fails(tmp_path, BACKWATER, "dem.tif", "nodata", terrain=dem)


def test_dem_in_another_crs(tmp_path):
    dem = backwater_dem(tmp_path, crs="EPSG:26918")
    assert_fails(tmp_path, BACKWATER, "dem.tif", "EPSG:26918", "EPSG:32128", "reproject", terrain=dem)


def test_bad_terrain_ratio(tmp_path):
    assert_fails(tmp_path, BACKWATER, "terrain_ratio", "2.5", terrain_ratio=2.5)


def test_a_converted_plan_exported_as_geotiff_holds_hecras_depths_at_hecras_cell_centres(tmp_path, muncie):
    import rasterio

    from floodlib.data.export import export_maps
    from floodlib.data.store import write_simulation

    cells = read_cells(MUNCIE, "Muncie2D", MUNCIE_CELLS)
    plan = write_simulation(tmp_path / "muncie.h5", muncie)
    written = export_maps(plan, tmp_path / "maps", times_min=[90], max_depth=False)
    assert [p.name for p in written] == ["muncie_depth_90min.tif"]
    with rasterio.open(written[0]) as dataset:
        assert dataset.crs.to_epsg() == 6458 and dataset.res == (40.0, 40.0)
        # GDAL's own lookup of each HEC-RAS cell centre, in the plan's coordinates, finds that cell's depth
        at_centres = np.array([value[0] for value in dataset.sample(cells["centres"].tolist())])
        inside = dataset.read_masks(1) > 0
    assert_allclose(at_centres, cells["surface"][3] - cells["minimum"], rtol=0, atol=4e-5)
    # cells outside the 2D area are nodata: as many map cells hold data as the area has cells
    assert inside.sum() == MUNCIE_CELLS


def test_a_hecras_file_where_a_dem_or_a_simulation_file_belongs_says_what_it_is(tmp_path):
    from floodlib.data.geotiff import read_geotiff

    with pytest.raises(SimulationFileError, match=r"Muncie2DOnly_SI.p01.hdf: file: holds no raster band \(GDAL reads it "
                                                  r"as HDF5, a container of \d+ datasets\); expected a GeoTIFF DEM"):
        read_geotiff(MUNCIE)
    assert_fails(tmp_path, MUNCIE, "Muncie2DOnly_SI.p01.hdf: file: holds no raster band", terrain=MUNCIE)
    with pytest.raises(SimulationFileError, match=r"terrain: dataset is missing; .* it looks like HEC-RAS plan results: "
                                                  r"convert them first \(floodlib.data.convert_hecras"):
        read_simulation(MUNCIE)
