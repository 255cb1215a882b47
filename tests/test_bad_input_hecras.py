"""HEC-RAS plans as real projects have them, on small plan files built here (no shared data needed):
plans in feet, files that do not state their units, several 2D areas, a last output off the interval,
and bad input answered clearly — each refusal names the file, the field and the value, and leaves no
output file behind."""

from __future__ import annotations

import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from floodlib.data import hecras
from floodlib.data.hecras import convert_hecras, list_2d_areas, read_hecras
from floodlib.data.store import SimulationFileError, read_simulation

SERIES = "Results/Unsteady/Output/Output Blocks/Base Output/Unsteady Time Series"
AREAS = "Geometry/2D Flow Areas"
START = datetime(2000, 1, 1)
FOOT = 0.3048
SURVEY_FOOT = 1200 / 3937

# Each area: 3 x 4 square cells of 100 length units, the cell at row 0, column 3 left out (an irregular
# outline). Area i lies 1000 units east of area 0, whose grid box starts at (WEST, NORTH).
ROWS, COLS, CELL = 3, 4, 100.0
WEST, NORTH = 5000.0, 9000.0
CELLS = [(r, c) for r in range(ROWS) for c in range(COLS) if (r, c) != (0, 3)]
GHOSTS = 2
TIMES_S = (0, 600, 1200, 1800)


def area_values(index: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres (cells, 2), minimum elevations (cells,) and depths (frames, cells) of area ``index``,
    in the plan's length unit."""
    rows = np.array([r for r, _ in CELLS], dtype=float)
    cols = np.array([c for _, c in CELLS], dtype=float)
    centres = np.column_stack([WEST + 1000.0 * index + CELL * (cols + 0.5), NORTH - CELL * (rows + 0.5)])
    minimum = 50.0 + 0.5 * rows + 0.25 * cols + 10.0 * index
    depth = 0.1 * np.arange(frames)[:, None] + 0.01 * np.arange(len(CELLS))[None, :] + 0.2 * index
    return centres, minimum, depth


def write_plan(path: Path, *, units: str | None = "SI Units", length: float = 1.0, areas=("north",),
               times_s=TIMES_S, projection: str | None = None, depth: str = "Depth", times: str = "stamps",
               edit=None) -> Path:
    """A small HEC-RAS plan results file; every length (coordinates, elevations, depths) is the
    ``area_values`` one times ``length``. ``edit(h5)`` may spoil it afterwards."""
    frames = len(times_s)
    with h5py.File(path, "w") as h5:
        if units is not None:
            h5.attrs["Units System"] = np.bytes_(units)
        if projection is not None:
            h5.attrs["Projection"] = np.bytes_(projection)
        h5.attrs["File Version"] = np.bytes_("HEC-RAS 6.5 February 2024")
        h5.create_group("Plan Data/Plan Information").attrs["Plan ShortID"] = np.bytes_("storm")
        table = np.zeros(len(areas), dtype=[("Name", "S16"), ("Cell Count", "<i4")])
        series = h5.create_group(SERIES)
        for index, name in enumerate(areas):
            table[index] = (name.encode(), len(CELLS))
            centres, minimum, depths = area_values(index, frames)
            # Ghost cells after the real ones hold values a reader must never use.
            centres = np.vstack([centres, np.zeros((GHOSTS, 2))]) * length
            minimum = np.r_[minimum, [np.nan] * GHOSTS] * length
            depths = np.hstack([depths, np.full((frames, GHOSTS), np.nan)]) * length
            geometry = h5.create_group(f"{AREAS}/{name}")
            geometry["Cells Center Coordinate"] = centres
            geometry["Cells Minimum Elevation"] = minimum
            results = series.create_group(f"2D Flow Areas/{name}")
            if depth == "Depth":
                results["Depth"] = depths
            else:
                results["Water Surface"] = minimum + depths
        h5[f"{AREAS}/Attributes"] = table
        if times == "stamps":
            stamps = [f"{START + timedelta(seconds=t):%d%b%Y %H:%M:%S}:000".upper() for t in times_s]
            series["Time Date Stamp (ms)"] = np.array(stamps, dtype="S24")
        else:
            series["Time"] = np.asarray(times_s, dtype=np.float64) / 86400.0
            series["Time"].attrs["Time"] = np.bytes_("Days")
        if edit is not None:
            edit(h5)
    return path


def write_dem(path: Path, *, length: float, crs: str | None = None) -> Path:
    """A tilted-plane GeoTIFF over area 0's grid box (20 units margin), 10 units a pixel, elevations and
    coordinates in the same length unit as the plan's (times ``length``), in ``crs`` (None: no CRS).
    Bilinear sampling is exact on a plane."""
    import rasterio
    from rasterio.transform import Affine

    pixel, west, north = 10.0, WEST - 20.0, NORTH + 20.0
    cols, rows = int((COLS * CELL + 40) / pixel), int((ROWS * CELL + 40) / pixel)
    xs = west + pixel * (np.arange(cols) + 0.5)
    ys = north - pixel * (np.arange(rows) + 0.5)
    x, y = np.meshgrid(xs, ys)
    values = (60.0 + 0.01 * (x - WEST) - 0.02 * (NORTH - y)) * length
    transform = Affine(pixel * length, 0, west * length, 0, -pixel * length, north * length)
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=1, dtype="float64",
                       transform=transform, crs=crs) as dataset:
        dataset.write(values, 1)
    return path


def crs_wkt(code: str) -> str:
    from rasterio.crs import CRS

    return CRS.from_user_input(code).to_wkt()


def assert_refused(tmp_path: Path, plan: Path, *fragments: str, **kwargs) -> str:
    """convert_hecras raises SimulationFileError naming the file and every fragment, and writes nothing."""
    out = tmp_path / "store" / "plan.h5"
    with pytest.raises(SimulationFileError) as info:
        convert_hecras(plan, out, **kwargs)
    message = str(info.value)
    assert str(plan) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary file left either
    return message


# -- plans in feet ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth, dem, crs", [
    ("Depth", False, None),
    ("Water Surface", False, None),
    ("Depth", True, None),
    ("Depth", True, "EPSG:2271"),
], ids=["depth-cell-terrain", "water-surface", "dem-in-feet-no-crs", "dem-and-plan-in-us-survey-feet"])
def test_a_us_customary_plan_reads_as_its_si_twin(tmp_path, depth, dem, crs):
    # The twin: the same plan with every length already in metres (and a metre DEM without a CRS).
    foot = SURVEY_FOOT if crs else FOOT
    us_plan = write_plan(tmp_path / "feet.p01.hdf", units="US Customary", depth=depth,
                         projection=crs_wkt(crs) if crs else None)
    si_plan = write_plan(tmp_path / "metres.p01.hdf", units="SI Units", length=foot, depth=depth)
    us = read_hecras(us_plan, terrain=write_dem(tmp_path / "feet.tif", length=1.0, crs=crs) if dem else None,
                     terrain_ratio=5)
    si = read_hecras(si_plan, terrain=write_dem(tmp_path / "metres.tif", length=foot) if dem else None,
                     terrain_ratio=5)

    assert us.cell_size_m == si.cell_size_m == round(CELL * foot, 6)
    assert us.terrain_spacing_m == si.terrain_spacing_m == pytest.approx(CELL * foot / 5, abs=1e-6)
    assert us.output_interval_s == si.output_interval_s == 600.0
    assert_allclose([us.origin_x, us.origin_y], [WEST * foot, NORTH * foot], rtol=0, atol=1e-6)
    assert_allclose([si.origin_x, si.origin_y], [WEST * foot, NORTH * foot], rtol=0, atol=1e-6)
    assert_array_equal(np.isnan(us.water_depth), np.isnan(si.water_depth))
    assert_allclose(us.water_depth, si.water_depth, rtol=1e-6, atol=1e-6)
    assert_allclose(us.terrain, si.terrain, rtol=1e-6, atol=0)
    # The known answer: the file's feet times 0.3048, cell by cell.
    _, minimum, depths = area_values(0, len(TIMES_S))
    rows, cols = np.array(CELLS).T
    assert_allclose(us.water_depth[:, rows, cols], depths * foot, rtol=1e-6, atol=1e-6)
    if not dem:
        assert_allclose(us.terrain[rows * 5 + 2, cols * 5 + 2], minimum * foot, rtol=1e-6)

    assert us.extra["source_units"] == "US Customary" and us.extra["source_units_from"] == "Units System"
    assert us.extra["foot_m"] == foot
    assert_allclose([us.extra["source_origin_x"], us.extra["source_origin_y"]], [WEST, NORTH], rtol=0, atol=1e-9)
    if crs:
        assert us.extra["converted_from"] == "US survey foot" and "Projection, 'US survey foot'" in us.source
    else:
        assert us.extra["converted_from"] == "international foot"
        assert "international foot (0.3048 m; assumed: the plan has no Projection)" in us.source
    assert ("no CRS: taken to be in the plan's international foot" in us.source) == (dem and not crs)
    assert si.extra["source_units"] == "SI" and "converted_from" not in si.extra and "foot" not in si.source


def test_a_dem_without_crs_whose_heights_are_stated_in_metres_meets_a_plan_in_feet(tmp_path):
    import rasterio

    us_plan = write_plan(tmp_path / "feet.p01.hdf", units="US Customary")
    si_plan = write_plan(tmp_path / "metres.p01.hdf", units="SI Units", length=FOOT)
    dem = write_dem(tmp_path / "feet.tif", length=1.0)  # coordinates and heights in the plan's feet ...
    with rasterio.open(dem, "r+") as dataset:
        dataset.write(dataset.read(1) * FOOT, 1)  # ... then the heights in metres, and the file says so
        dataset.set_band_unit(1, "metre")
    us = read_hecras(us_plan, terrain=dem, terrain_ratio=5)
    si = read_hecras(si_plan, terrain=write_dem(tmp_path / "metres.tif", length=FOOT), terrain_ratio=5)
    assert_allclose(us.terrain, si.terrain, rtol=1e-6, atol=0)
    assert "no CRS: coordinates taken to be in the plan's international foot" in us.source


def test_the_conversion_is_recorded_in_the_store(tmp_path):
    plan = write_plan(tmp_path / "feet.p01.hdf", units="US Customary", projection=crs_wkt("EPSG:2271"))
    out = convert_hecras(plan, tmp_path / "store" / "feet.h5")
    with h5py.File(out, "r") as h5:  # readable without floodlib
        assert h5.attrs["source_units"] == "US Customary"
        assert h5.attrs["converted_from"] == "US survey foot"
        assert h5.attrs["foot_m"] == SURVEY_FOOT
    stored = read_simulation(out)
    assert stored.cell_size_m == round(100 * SURVEY_FOOT, 6)
    assert_allclose([stored.extra["source_origin_x"], stored.extra["source_origin_y"]], [WEST, NORTH], atol=1e-9)
    assert_allclose(stored.origin_x, WEST * SURVEY_FOOT, rtol=0, atol=1e-6)
    assert "US survey foot" in stored.source and "Pennsylvania North (ftUS)" not in stored.source


@pytest.mark.parametrize("projection, foot, name, why", [
    (crs_wkt("EPSG:2271"), SURVEY_FOOT, "US survey foot", "the unit of the plan's Projection, 'US survey foot'"),
    (crs_wkt("EPSG:2222"), FOOT, "international foot", "the unit of the plan's Projection, 'foot'"),
    (crs_wkt("EPSG:32128"), FOOT, "international foot", "assumed: the plan has a Projection in 'metre', not feet"),
    ("LOCAL_CS[my site]", FOOT, "international foot", "assumed: the plan has a Projection that could not be read"),
], ids=["us-survey", "international", "metre-projection", "unreadable-projection"])
def test_the_foot_follows_the_projection(tmp_path, projection, foot, name, why):
    plan = write_plan(tmp_path / "feet.p01.hdf", units="US Customary", projection=projection)
    if "in 'metre'" in why:  # feet by the plan's units, metres by its projection: said, and no DEM can be placed
        with pytest.warns(UserWarning, match=r"feet.p01.hdf: the plan's lengths are in feet \(Units System: US "
                                             r"Customary\) but its Projection is in metres.*read as international foot"):
            sim = read_hecras(plan)
        with pytest.raises(SimulationFileError, match=r"feet.p01.hdf: Projection: the plan's lengths are in feet .* a DEM "
                                                      r"cannot be placed under its cells"):
            read_hecras(plan, terrain=write_dem(tmp_path / "dem.tif", length=1.0, crs="EPSG:32128"))
    else:
        sim = read_hecras(plan)
    assert sim.extra["converted_from"] == name and sim.extra["foot_m"] == foot
    assert why in sim.source
    assert sim.cell_size_m == round(CELL * foot, 6)
    assert_allclose([sim.origin_x, sim.origin_y], [WEST * foot, NORTH * foot], rtol=0, atol=1e-6)
    assert sim.crs == projection  # the plan's own projection, kept as it is


def test_units_stated_by_the_caller_for_a_file_that_does_not_state_them(tmp_path):
    silent = write_plan(tmp_path / "silent.p01.hdf", units=None)
    as_feet = read_hecras(silent, units="US")
    stated = read_hecras(write_plan(tmp_path / "feet.p01.hdf", units="US Customary"))
    assert_array_equal(as_feet.water_depth, stated.water_depth)
    assert as_feet.extra["source_units"] == "US Customary" and as_feet.extra["source_units_from"] == "units argument"
    as_metres = read_hecras(silent, units="si")
    assert as_metres.cell_size_m == 100.0 and as_metres.extra["source_units"] == "SI"
    # Stating what the file states is allowed.
    assert read_hecras(write_plan(tmp_path / "metres.p01.hdf"), units="SI").cell_size_m == 100.0


# -- several 2D areas ------------------------------------------------------------------------------------------

def test_each_area_of_a_plan_gets_its_own_default_name(tmp_path):
    plan = write_plan(tmp_path / "valley.p03.hdf", areas=("north", "south bank"))
    assert list_2d_areas(plan) == ["north", "south bank"]
    north, south = (read_hecras(plan, area=name) for name in ("north", "south bank"))
    assert (north.project, north.plan) == ("valley", "storm (north)")
    assert (south.project, south.plan) == ("valley", "storm (south bank)")
    assert_allclose(south.origin_x - north.origin_x, 1000.0)
    rows, cols = np.array(CELLS).T
    assert_allclose(south.water_depth[:, rows, cols], area_values(1, len(TIMES_S))[2], rtol=1e-6)
    # Stored where a run keeps them (<project>/<plan>.h5): one file each, neither overwriting the other.
    written = {convert_hecras(plan, tmp_path / "data" / sim.project / f"{sim.plan}.h5", area=area)
               for sim, area in ((north, "north"), (south, "south bank"))}
    assert len(written) == 2 and all(read_simulation(path).plan in path.name for path in written)
    # A plan with one area keeps its plain name, and a name given is used as it is.
    assert read_hecras(write_plan(tmp_path / "single.p01.hdf")).plan == "storm"
    assert read_hecras(plan, area="north", plan="p03-north").plan == "p03-north"


# -- a last output off the interval ----------------------------------------------------------------------------

@pytest.mark.parametrize("times, field, when", [
    ("stamps", "Time Date Stamp (ms)", " (2000-01-01 00:33:00)"),
    ("days", "Unsteady Time Series/Time", ""),
])
def test_a_last_output_off_the_interval_is_dropped(tmp_path, times, field, when):
    # Outputs every 10 min; the simulation ended 3 min after the 30 min output.
    plan = write_plan(tmp_path / "short.p01.hdf", times_s=(*TIMES_S, 1980), times=times)
    with pytest.warns(UserWarning) as caught:
        sim = read_hecras(plan)
    message = str(caught[0].message)
    for fragment in (str(plan), field, f"the last output, 1980 s after the first{when}, is 180 s after the one before "
                     "it, off the 600 s output interval", "dropped"):
        assert fragment in message, message
    assert sim.output_interval_s == 600.0
    assert sim.extra["hecras_dropped_output_s"] == 1980.0
    regular = read_hecras(write_plan(tmp_path / "regular.p01.hdf", times=times))
    assert_array_equal(sim.water_depth, regular.water_depth)  # the four regular frames, unchanged
    with pytest.warns(UserWarning, match="1980 s"):
        stored = read_simulation(convert_hecras(plan, tmp_path / "short.h5"))
    assert stored.water_depth.shape[0] == 4 and stored.extra["hecras_dropped_output_s"] == 1980.0


# -- terrain size ----------------------------------------------------------------------------------------------

def test_the_largest_terrain_ratio_allowed_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr(hecras, "MAX_TERRAIN_POINTS", 1000)
    plan = write_plan(tmp_path / "small.p01.hdf")
    # 3 x 4 cells: ratio 8 gives 25 x 33 = 825 points, ratio 9 gives 28 x 37 = 1036.
    assert_refused(tmp_path, plan, "terrain_ratio", "9 would make a terrain of 28 x 37 = 1,036 points", "area 'north'",
                   "at most 1,000 points", "terrain_ratio <= 8", terrain_ratio=9)
    assert read_hecras(plan, terrain_ratio=8).terrain.shape == (25, 33)


@pytest.mark.parametrize("dem", [False, True], ids=["cell-terrain", "dem"])
def test_terrain_built_in_blocks_is_the_terrain_built_at_once(tmp_path, monkeypatch, dem):
    plan = write_plan(tmp_path / "feet.p01.hdf", units="US Customary")
    terrain = write_dem(tmp_path / "feet.tif", length=1.0) if dem else None
    whole = read_hecras(plan, terrain=terrain, terrain_ratio=20)
    monkeypatch.setattr(hecras, "TERRAIN_BLOCK_POINTS", 200)  # 81 points a row: blocks of 2 rows
    blocks = read_hecras(plan, terrain=terrain, terrain_ratio=20)
    assert_allclose(blocks.terrain, whole.terrain, rtol=0, atol=1e-5)


# -- refused -------------------------------------------------------------------------------------------------------

BAD_PLANS = {
    # id: (write_plan keywords, read keywords, fragments the message must hold)
    "units-missing": ({"units": None}, {}, ["Units System", "missing", "units='SI'", "units='US'"]),
    "units-empty": ({"units": ""}, {}, ["Units System", "missing or empty", "units='SI'", "units='US'"]),
    "units-unknown": ({"units": "Furlongs"}, {}, ["Units System", "'Furlongs'", "'SI Units'", "'US Customary'"]),
    "si-file-said-us": ({}, {"units": "US"}, ["Units System", "'SI Units' (SI)", "units='US'", "units=None"]),
    "us-file-said-si": ({"units": "US Customary"}, {"units": "SI"},
                        ["Units System", "'US Customary' (US)", "units='SI'"]),
    "units-argument": ({}, {"units": "metres"}, ["units: 'metres'", "'SI'", "'US'"]),
    "uneven-middle": ({"times_s": (0, 600, 1300, 1800)}, {},
                      ["Time Date Stamp (ms)", "not evenly spaced", "700 s between outputs 1 and 2"]),
    "last-gap-longer": ({"times_s": (0, 600, 1200, 1900)}, {},
                        ["Time Date Stamp (ms)", "700 s between outputs 2 and 3"]),
    "last-two-off": ({"times_s": (0, 600, 1200, 1500, 1700)}, {},
                     ["Time Date Stamp (ms)", "300 s between outputs 2 and 3"]),
    "last-repeated": ({"times_s": (0, 600, 1200, 1200)}, {}, ["Time Date Stamp (ms)", "0 s between outputs 2 and 3"]),
    "last-repeated-days": ({"times_s": (0, 600, 1200, 1200), "times": "days"}, {},
                           ["Unsteady Time Series/Time", "0 s between outputs 2 and 3"]),
    "times-backwards": ({"times_s": (600, 0, 1200)}, {},
                        ["Time Date Stamp (ms)", "output 1 is -600 s after output 0", "must increase"]),
    "one-output": ({"times_s": (0,)}, {}, ["Time Date Stamp (ms)", "holds 1 output time"]),
    "feet-off-lattice": ({"units": "US Customary",
                          "edit": lambda h5: h5[f"{AREAS}/north/Cells Center Coordinate"].__setitem__((4, 0), 5163.0)},
                         {}, ["north/Cells Center Coordinate", "93.5 ft apart in x but 100 ft apart in y"]),
    "feet-negative-depth": ({"units": "US Customary",
                             "edit": lambda h5: h5[f"{SERIES}/2D Flow Areas/north/Depth"].__setitem__((2, 5), -0.5)},
                            {}, ["north/Depth", "frame 2, cell 5", "-0.5 ft (-0.1524 m)", ">= 0 m"]),
    "no-areas": ({"areas": ()}, {}, ["Geometry/2D Flow Areas", "no 2D flow areas"]),
    "area-not-chosen": ({"areas": ("north", "south")}, {}, ["area", "'north'", "'south'", "area="]),
}


@pytest.mark.parametrize("build, read, fragments", BAD_PLANS.values(), ids=BAD_PLANS.keys())
def test_a_bad_plan_is_refused_naming_file_field_and_value(tmp_path, build, read, fragments):
    plan = write_plan(tmp_path / "bad.p01.hdf", **build)
    assert_refused(tmp_path, plan, *fragments, **read)


def test_a_plan_without_areas_is_refused_by_list_2d_areas(tmp_path):
    plan = write_plan(tmp_path / "empty.p01.hdf", areas=())
    with pytest.raises(SimulationFileError, match=f"{plan}: Geometry/2D Flow Areas: holds no 2D flow areas"):
        list_2d_areas(plan)


def test_a_huge_terrain_ratio_is_refused_before_anything_is_built(tmp_path):
    plan = write_plan(tmp_path / "small.p01.hdf")
    tracemalloc.start()
    try:
        # The DEM is never opened: the size is refused first (a missing DEM would be another error).
        assert_refused(tmp_path, plan, "terrain_ratio", "1000000 would make a terrain of 3,000,001 x 4,000,001 = "
                       "12,000,007,000,001 points", "48,000.0 GB", "at most 200,000,000 points",
                       "terrain_ratio <= 4082", terrain_ratio=1_000_000, terrain=tmp_path / "absent.tif")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated before refusing"
