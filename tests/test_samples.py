"""Samples, splits and the patch Dataset, against hand-built simulations with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from floodlib.data.dataset import PatchDataset, SplitSpec, discover_plans, load_splits, split_plans
from floodlib.data.preview import preview_samples
from floodlib.data.samples import SampleSpec, apply_transform, cut_sample, index_plan, patch_origins
from floodlib.data.store import Simulation, SimulationFileError, plan_file_name, read_simulation, write_simulation

# Small geometry so tests stay fast: patches of 8 cells, 4 terrain points per cell.
SPEC = SampleSpec(patch_cells=8, terrain_ratio=4, snapshot_times_s=(0, 600, 1200, 1800), delta_t_s=300,
                  ring_cells=2, dry_threshold_m=2.0)


def coded_simulation(rows=24, cols=20, frames=8, interval=300.0, project="p", plan="plan_000", wet=1.0):
    """Depth at frame f, cell (i, j) = wet + f + i / 100 + j / 10_000; terrain point (a, b) = a * 1000 + b.

    Every value tells where it came from, so a sample can be checked cell by cell.
    """
    f, i, j = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij")
    depth = (wet + f + i / 100 + j / 10_000).astype(np.float32)
    a, b = np.meshgrid(np.arange(rows * 4 + 1), np.arange(cols * 4 + 1), indexing="ij")
    terrain = (a * 1000.0 + b).astype(np.float32)
    return Simulation(project=project, plan=plan, terrain=terrain, water_depth=depth, cell_size_m=10.0,
                      terrain_spacing_m=2.5, output_interval_s=interval, source="test")


def test_patch_origins_standard_and_dual():
    assert_array_equal(patch_origins(64, 32, dual=False), [0, 32])  # the reference dropped the last one here
    assert_array_equal(patch_origins(64, 32, dual=True), [16])
    assert_array_equal(patch_origins(100, 32, dual=False), [0, 32, 64])
    assert_array_equal(patch_origins(100, 32, dual=True), [16, 48])
    assert_array_equal(patch_origins(300, 32, dual=False, trim=100), [100, 132, 164])
    assert patch_origins(20, 32, dual=False).size == 0


def test_more_samples_from_the_same_simulation_snapshots_every_k_minutes_and_overlapping_patches():
    """24x20 cells, 8 frames 5 min apart, P=8, dt 5 min: a snapshot every 10 min gives n = 0, 10, 20, 30 min
    (n = 35 min would need a frame at 40 min); origins every 4 cells overlap."""
    simulation = coded_simulation()
    spec = SampleSpec(patch_cells=8, terrain_ratio=4, snapshot_every_s=600, delta_t_s=300, patch_stride_cells=4)
    assert spec.snapshot_times(7 * 300.0) == (0.0, 600.0, 1200.0, 1800.0)
    plan_index = index_plan(simulation, spec)
    entries = plan_index.entries
    # standard grid: origins 0,4,..,16 x 0,4,..,12 -> 5x4; dual grid: 4,8,12,16 x 4,8,12 -> 4x3
    assert plan_index.per_snapshot == [20, 12, 20, 12]
    assert_array_equal(np.unique(entries["frame"]), [0, 2, 4, 6])
    assert_array_equal(entries["next_frame"] - entries["frame"], 1)
    assert_array_equal(np.unique(entries["row"][entries["frame"] == 2]), [4, 8, 12, 16])
    assert_array_equal(entries["transform"], np.repeat([0, 1, 2, 3], [20, 12, 20, 12]))
    # every sample is still the coded slice of its origin, frame and transform
    for entry in entries[::7]:
        terrain, depths, change = cut_sample(simulation.terrain, simulation.water_depth, entry, spec)
        r, c, f, t = int(entry["row"]), int(entry["col"]), int(entry["frame"]), int(entry["transform"])
        assert_array_equal(depths[1], apply_transform(simulation.water_depth[f, r:r + 8, c:c + 8], t))
        assert_array_equal(change[0], apply_transform(simulation.water_depth[f + 1, r:r + 8, c:c + 8]
                                                      - simulation.water_depth[f, r:r + 8, c:c + 8], t))
        assert_array_equal(terrain[0], apply_transform(simulation.terrain[4 * r:4 * r + 33, 4 * c:4 * c + 33], t))
    # the reference's definition is untouched by the new options' defaults
    seed = index_plan(simulation, SPEC).entries
    assert len(seed) == 20 and SampleSpec().stride == 32 and SampleSpec().snapshot_times(1e9) == SampleSpec().snapshot_times_s
    assert spec.describe() == ("a snapshot every 10 min, 5 min ahead; 8-cell patches, origins every 4 cells "
                               "(overlapping)")
    assert SampleSpec().describe() == "snapshots at 0/70/140/210 min, 60 min ahead; 32-cell patches, origins every 32 cells"


def test_sampling_options_are_checked():
    with pytest.raises(ValueError, match=r"snapshot_every_s=600 and snapshot_times_s=\(0, 300\) are alternatives"):
        SampleSpec(snapshot_every_s=600, snapshot_times_s=(0, 300))
    with pytest.raises(ValueError, match=r"snapshot_every_s=-1 must be a number of seconds >= 0"):
        SampleSpec(snapshot_every_s=-1)
    with pytest.raises(ValueError, match=r"patch_stride_cells=-4 must be an integer >= 0"):
        SampleSpec(patch_stride_cells=-4)
    with pytest.raises(ValueError, match=r"snapshot time 450 s is not a multiple of the output interval 300 s"):
        index_plan(coded_simulation(), SampleSpec(patch_cells=8, terrain_ratio=4, snapshot_every_s=450,
                                                  delta_t_s=300))
    with pytest.raises(ValueError, match=r"delta_t 3000 s is longer than plan p/plan_000 \(2100 s\)"):
        index_plan(coded_simulation(), SampleSpec(patch_cells=8, terrain_ratio=4, snapshot_every_s=600,
                                                  delta_t_s=3000))


def test_transforms_are_the_reference_schedule():
    a = np.arange(9).reshape(3, 3)
    assert_array_equal(apply_transform(a, 0), a)
    assert_array_equal(apply_transform(a, 1), np.rot90(np.flipud(a), k=1))
    assert_array_equal(apply_transform(a, 1), a[::-1, ::-1].T)  # reflection about the anti-diagonal
    assert_array_equal(apply_transform(a, 2), a[::-1, :])
    assert_array_equal(apply_transform(a, 2), np.rot90(np.fliplr(a), k=2))  # column flip then a 180-degree turn
    assert_array_equal(apply_transform(a, 3), a[:, ::-1])


def test_index_alternates_grids_and_transforms():
    simulation = coded_simulation()
    plan_index = index_plan(simulation, SPEC)
    entries = plan_index.entries
    # 24x20 cells, P=8: standard origins 0,8,16 x 0,8 -> 3x2 patches; dual origins 4,12 x 4,12 -> 2x2.
    assert plan_index.per_snapshot == [6, 4, 6, 4]
    assert_array_equal(entries["frame"], [0] * 6 + [2] * 4 + [4] * 6 + [6] * 4)
    assert_array_equal(entries["next_frame"], entries["frame"] + 1)
    assert_array_equal(entries["transform"], [0] * 6 + [1] * 4 + [2] * 6 + [3] * 4)
    assert set(zip(entries["row"][6:10], entries["col"][6:10])) == {(4, 4), (4, 12), (12, 4), (12, 12)}
    assert plan_index.dry_dropped == 0 and plan_index.masked_dropped == 0


def test_sample_values_channels_ring_and_change():
    simulation = coded_simulation()
    entries = index_plan(simulation, SPEC).entries
    entry = entries[(entries["transform"] == 0) & (entries["row"] == 8) & (entries["col"] == 8)][0]
    terrain, depths, change = cut_sample(simulation.terrain, simulation.water_depth, entry, SPEC)
    assert terrain.shape == (1, 33, 33) and depths.shape == (2, 8, 8) and change.shape == (1, 8, 8)
    assert terrain.dtype == depths.dtype == change.dtype == np.float32
    # Terrain points under cells 8..15 are points 32..64 (shared edges included).
    assert terrain[0, 0, 0] == 32 * 1000 + 32 and terrain[0, -1, -1] == 64 * 1000 + 64
    now = simulation.water_depth[0, 8:16, 8:16]
    later = simulation.water_depth[1, 8:16, 8:16]
    assert_array_equal(depths[1], now)  # channel 1: depth at n
    ring = depths[0]  # channel 0: the boundary ring of the depth at n + dt
    assert_array_equal(ring[2:-2, 2:-2], 0)
    assert_array_equal(ring[:2], later[:2])
    assert_array_equal(ring[:, -2:], later[:, -2:])
    np.testing.assert_allclose(change[0], later - now, atol=1e-6)
    np.testing.assert_allclose(change[0], 1.0, atol=1e-5)  # one frame later adds exactly 1 m


def test_transformed_samples_match_the_transformed_plan():
    simulation = coded_simulation()
    entries = index_plan(simulation, SPEC).entries
    for transform in (1, 2, 3):
        entry = entries[entries["transform"] == transform][0]
        r, c, f = int(entry["row"]), int(entry["col"]), int(entry["frame"])
        terrain, depths, _ = cut_sample(simulation.terrain, simulation.water_depth, entry, SPEC)
        assert_array_equal(depths[1], apply_transform(simulation.water_depth[f, r:r + 8, c:c + 8], transform))
        assert_array_equal(terrain[0], apply_transform(simulation.terrain[4 * r:4 * r + 33, 4 * c:4 * c + 33], transform))
    # The anti-diagonal reflection moves the patch's top-left cell to its bottom-right corner.
    entry = entries[entries["transform"] == 1][0]
    _, depths, _ = cut_sample(simulation.terrain, simulation.water_depth, entry, SPEC)
    r, c, f = int(entry["row"]), int(entry["col"]), int(entry["frame"])
    assert depths[1, -1, -1] == simulation.water_depth[f, r, c]


def test_dry_and_out_of_area_patches_are_dropped():
    simulation = coded_simulation(wet=0.0)
    depth = simulation.water_depth
    depth[:] = 0.0
    depth[:, 0:8, 0:8] = 1.0  # one wet standard patch
    depth[:, 8:16, 0:8] = 2.0 / 128 - 1e-4  # sums to just under 2 m over 64 cells at n and n + dt
    depth[:, 16:24, 8:16] = 0.5
    depth[:, 16, 9] = np.nan  # touches the model's outline
    plan_index = index_plan(simulation, SPEC)
    standard = plan_index.entries[plan_index.entries["transform"] == 0]
    assert set(zip(standard["row"], standard["col"])) == {(0, 0)}
    assert plan_index.masked_dropped >= 1
    assert plan_index.dry_dropped >= 4
    exact = coded_simulation(wet=0.0)
    exact.water_depth[:] = 0.0
    exact.water_depth[:, 0:8, 0:8] = 2.0 / 128  # exactly 2 m: kept ("below 2 m" is dry)
    kept = index_plan(exact, SPEC).entries
    assert (0, 0) in set(zip(kept["row"], kept["col"]))


def test_snapshot_times_must_fit_the_plan():
    simulation = coded_simulation(frames=6)
    with pytest.raises(ValueError, match=r"need plans of at least 2100 s; plan p/plan_000 ends at 1500 s"):
        index_plan(simulation, SPEC)
    with pytest.raises(ValueError, match="not a multiple of the output interval 300 s"):
        index_plan(coded_simulation(), SampleSpec(patch_cells=8, terrain_ratio=4, snapshot_times_s=(0, 450), delta_t_s=300))
    with pytest.raises(ValueError, match=r"terrain ratio 4 .* SampleSpec.terrain_ratio=10"):
        index_plan(simulation, SampleSpec())


@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(patch_cells=7), "must be even"),
    (dict(ring_cells=0), r"ring_cells=0 must be an integer >= 1"),
    (dict(patch_cells=8, ring_cells=5), "more than half"),
    (dict(delta_t_s=-1.0), "delta_t_s=-1.0 must be a positive"),
    (dict(snapshot_times_s=()), "snapshot_times_s"),
])
def test_sample_spec_rejects_bad_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SampleSpec(**kwargs)


def write_project(root: Path, project: str, plans: int, **kwargs) -> list[Path]:
    return [write_simulation(root / project / f"plan_{k:03d}.h5",
                             coded_simulation(project=project, plan=f"plan_{k:03d}", wet=1.0 + k, **kwargs))
            for k in range(plans)]


def test_store_round_trip_and_memory_map(tmp_path):
    simulation = coded_simulation()
    simulation.event = {"peak_m3s": 12.5}
    simulation.extra = {"mass_balance": {"relative_error": 0.001}}
    path = write_simulation(tmp_path / "a.h5", simulation)
    for memory_map in (False, True):
        back = read_simulation(path, memory_map=memory_map)
        assert_array_equal(back.water_depth, simulation.water_depth)
        assert_array_equal(back.terrain, simulation.terrain)
        assert isinstance(back.water_depth, np.memmap) == memory_map
    assert back.event == {"peak_m3s": 12.5}
    assert back.extra["mass_balance"] == {"relative_error": 0.001}
    assert back.terrain_ratio == 4 and back.output_interval_s == 300.0
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_store_rejects_bad_simulations_and_keeps_existing_files(tmp_path):
    good = write_simulation(tmp_path / "a.h5", coded_simulation())
    before = good.read_bytes()
    bad = coded_simulation()
    bad.water_depth[3, 2, 2] = -0.5
    with pytest.raises(SimulationFileError, match=r"a.h5: water_depth: frame 3, row 2, column 2 holds -0.5"):
        write_simulation(good, bad)
    assert good.read_bytes() == before
    short = coded_simulation()
    short.terrain = short.terrain[:-1]
    with pytest.raises(SimulationFileError, match=r"terrain: shape \(96, 81\) does not cover the 24x20 grid"):
        write_simulation(tmp_path / "b.h5", short)
    holes = coded_simulation()
    holes.terrain[5, 7] = np.nan
    with pytest.raises(SimulationFileError, match=r"terrain: 1 points are NaN or infinite \(first at row 5, column 7"):
        write_simulation(tmp_path / "c.h5", holes)
    odd = coded_simulation()
    odd.terrain_spacing_m = 3.0
    with pytest.raises(SimulationFileError, match=r"10.0 / 3.0 = 3.33333 must be a whole number"):
        write_simulation(tmp_path / "d.h5", odd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_plan_file_names_are_one_file_each_and_name_the_plan(tmp_path):
    from urllib.parse import unquote

    names = ["plan_000", "Plan 01 (SI)", "100yr/24h", "100yr%2F24h", "100yr:24h", "..", ".hidden", "a\\b", "ü*?"]
    files = [plan_file_name(name) for name in names]
    assert files[:3] == ["plan_000.h5", "Plan 01 (SI).h5", "100yr%2F24h.h5"]
    assert len(set(files)) == len(names)  # distinct names never share a file
    for name, file in zip(names, files):
        assert file.endswith(".h5") and not file.startswith(".") and unquote(file[:-3]) == name
        path = tmp_path / file
        path.write_text(name)  # a plain file right in the folder: no separator, no special name
        assert path.parent == tmp_path and path.read_text() == name
    with pytest.raises(ValueError, match="must not be empty"):
        plan_file_name("")


def test_store_reports_missing_and_corrupt_files(tmp_path):
    import h5py

    with pytest.raises(SimulationFileError, match="missing.h5: file: does not exist"):
        read_simulation(tmp_path / "missing.h5")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(write_simulation(tmp_path / "x.h5", coded_simulation()).read_bytes()[:2000])
    with pytest.raises(SimulationFileError, match="corrupt.h5: file: is not a readable HDF5 file"):
        read_simulation(corrupt)
    for field in ("water_depth", "output_interval_s"):
        path = write_simulation(tmp_path / f"no_{field}.h5", coded_simulation())
        with h5py.File(path, "a") as h5:
            if field in h5:
                del h5[field]
            else:
                del h5.attrs[field]
        with pytest.raises(SimulationFileError, match=f"no_{field}.h5: {field}: .*missing"):
            read_simulation(path)


def test_splits_are_by_plan_and_never_leak(tmp_path):
    for project, count in (("alpha", 12), ("beta", 10)):
        write_project(tmp_path, project, count)
    splits = split_plans(discover_plans(tmp_path), SplitSpec(small_plans=5, test_plans=3, val_fraction=0.3))
    names = {k: [p.stem for p in v] for k, v in splits.items()}
    assert names["small_train"] == ["plan_000", "plan_001", "plan_002"]
    assert names["small_val"] == ["plan_003", "plan_004"]
    assert [p.parent.name for p in splits["big_test"]] == ["alpha"] * 3 + ["beta"] * 3
    assert names["alpha_test"] == ["plan_009", "plan_010", "plan_011"]
    train = set(splits["big_train"]) | set(splits["small_train"])
    assert not train & set(splits["big_test"])
    assert not set(splits["big_train"]) & set(splits["big_val"])
    assert len(splits["big_train"]) + len(splits["big_val"]) == 9 + 7
    with pytest.raises(ValueError, match=r"small_plans=10 would take test plans of project 'alpha'"):
        split_plans(discover_plans(tmp_path), SplitSpec(small_plans=10, test_plans=3))
    with pytest.raises(ValueError, match=r"project 'beta' has 10 plan\(s\); SplitSpec.test_plans=9"):
        split_plans(discover_plans(tmp_path), SplitSpec(small_plans=2, test_plans=9))


def test_projects_held_out_whole_are_in_no_training_split(tmp_path):
    for project, count in (("alpha", 8), ("beta", 3), ("gamma", 6)):
        write_project(tmp_path, project, count)
    spec = SplitSpec(small_plans=3, test_plans=2, val_fraction=0.3, test_projects=["beta"])
    splits = split_plans(discover_plans(tmp_path), spec)
    held_out = splits["test_projects"]
    assert [f"{p.parent.name}/{p.stem}" for p in held_out] == ["beta/plan_000", "beta/plan_001", "beta/plan_002"]
    assert splits["beta_test"] == held_out and "beta_train_val" not in splits
    for name in ("small_train", "small_val", "big_train", "big_val", "big_test", "alpha_train_val", "alpha_test",
                 "gamma_train_val", "gamma_test"):
        assert not {p.parent.name for p in splits[name]} & {"beta"}, name
    # big_test stays the plan-held-out test of the training projects: the last test_plans of each.
    assert [f"{p.parent.name}/{p.stem}" for p in splits["big_test"]] == [
        "alpha/plan_006", "alpha/plan_007", "gamma/plan_004", "gamma/plan_005"]
    assert len(splits["big_train"]) + len(splits["big_val"]) == 6 + 4
    # beta has too few plans to train (3 < test_plans + 2), which only matters when it trains.
    with pytest.raises(ValueError, match=r"project 'beta' has 3 plan\(s\); SplitSpec.test_plans=2"):
        split_plans(discover_plans(tmp_path), SplitSpec(small_plans=3, test_plans=2))
    # The small split comes from small_project, else the first training project by name.
    assert {p.parent.name for p in split_plans(discover_plans(tmp_path), SplitSpec(
        small_plans=3, test_plans=2, test_projects=("alpha", "beta")))["small_train"]} == {"gamma"}
    small = split_plans(discover_plans(tmp_path), SplitSpec(small_plans=4, test_plans=2, test_projects=["beta"],
                                                            small_project="gamma"))
    assert [p.stem for p in small["small_train"] + small["small_val"]] == [f"plan_00{k}" for k in range(4)]
    assert {p.parent.name for p in small["small_train"]} == {"gamma"}
    # The same splits as datasets: the held-out split has every sample of its plans.
    datasets = load_splits(tmp_path, sample_spec=SPEC, split_spec=spec, names=["test_projects", "beta_test"])
    assert datasets["test_projects"].summary.plans == ["beta/plan_000", "beta/plan_001", "beta/plan_002"]
    assert len(datasets["test_projects"]) == len(datasets["beta_test"]) == 3 * 20


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"test_projects": ["delta"]},
     r"SplitSpec.test_projects: unknown project\(s\) \['delta'\]; the projects are \['alpha', 'beta'\]"),
    ({"test_projects": ["beta", "alpha"]},
     r"SplitSpec.test_projects: \['beta', 'alpha'\] holds out every project; at least one must remain"),
    ({"small_project": "delta"}, r"SplitSpec.small_project: unknown project 'delta'; the projects are"),
])
def test_held_out_projects_must_be_known_and_leave_one_to_train(tmp_path, kwargs, pattern):
    for project in ("alpha", "beta"):
        write_project(tmp_path, project, 5)
    with pytest.raises(ValueError, match=pattern):
        split_plans(discover_plans(tmp_path), SplitSpec(small_plans=2, test_plans=2, **kwargs))


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"test_projects": "alpha"}, r"SplitSpec.test_projects='alpha' must be a list of project names"),
    ({"test_projects": ["alpha", ""]}, r"must be a list of project names"),
    ({"test_projects": ["alpha", "alpha"]}, r"names a project more than once"),
    ({"test_projects": ["alpha"], "small_project": "alpha"}, r"small_project='alpha' is held out by test_projects"),
])
def test_split_spec_refuses_bad_held_out_projects(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SplitSpec(**kwargs)


def test_a_project_can_draw_its_samples_its_own_way(tmp_path):
    """A small tile yields samples only with denser patch origins; the other projects keep the spec's own."""
    small_tile = coded_simulation(rows=11, cols=11, project="tile")  # too small for a dual-grid patch
    large = coded_simulation(rows=24, cols=20, project="valley")
    dense = {"snapshot_every_s": 300, "patch_stride_cells": 2}
    spec = SampleSpec(**{**SPEC.__dict__, "projects": {"tile": dense}})
    assert len(index_plan(small_tile, SPEC).entries) == 2  # one standard patch at 0 and at 1200 s
    own = index_plan(small_tile, spec)
    # A snapshot every 300 s up to 1800 s (7, the dual ones fit no patch), origins 0 and 2 on the standard grid.
    assert len(own.entries) == 4 * 4 and own.per_snapshot == [4, 0, 4, 0, 4, 0, 4]
    assert_array_equal(index_plan(large, spec).entries, index_plan(large, SPEC).entries)
    assert spec.for_project("tile").snapshot_times(2100.0) == (0.0, 300.0, 600.0, 900.0, 1200.0, 1500.0, 1800.0)
    assert spec.for_project("valley") == SPEC
    assert "project tile: a snapshot every 5 min, origins every 2 cells" in spec.describe()
    write_simulation(tmp_path / "tile" / "plan_000.h5", small_tile)
    dataset = PatchDataset([tmp_path / "tile" / "plan_000.h5"], spec=spec)
    assert len(dataset) == 16 and dataset[15].depths.shape == (2, 8, 8)
    with pytest.raises(ValueError, match=r"SampleSpec.projects\['tile'\].patch_cells: patch_cells cannot differ by "
                                         r"project \(it is one setting of the samples for every project\)"):
        SampleSpec(projects={"tile": {"patch_cells": 16}})
    # A misspelt option is not told it "cannot differ": it is no option at all, and the one it resembles is named.
    with pytest.raises(ValueError, match=r"SampleSpec.projects\['tile'\].snapshot_evry_s: no such option; did you "
                                         r"mean 'snapshot_every_s'\? Options by project: snapshot_times_s, "):
        SampleSpec(projects={"tile": {"snapshot_evry_s": 600}})
    with pytest.raises(ValueError, match=r"SampleSpec.projects\['tile'\]: SampleSpec.patch_stride_cells=-1"):
        SampleSpec(projects={"tile": {"patch_stride_cells": -1}})


def test_dataset_delivers_float32_samples_deterministically(tmp_path):
    write_project(tmp_path, "alpha", 6)
    datasets = load_splits(tmp_path, sample_spec=SPEC, split_spec=SplitSpec(small_plans=4, test_plans=2),
                           names=["small_train", "big_test"])
    train = datasets["small_train"]
    assert train.summary.samples == len(train) == 3 * 20
    assert train.summary.plans == ["alpha/plan_000", "alpha/plan_001", "alpha/plan_002"]
    assert "3 plans, 60 samples (0 dry and 0 out-of-area patches dropped); snapshots at 0/10/20/30 min" \
        in str(train.summary)
    sample = train[20]
    assert sample.terrain.dtype == sample.depths.dtype == torch.float32
    info = train.sample_info(20)
    expected = cut_sample(*(lambda s: (s.terrain, s.water_depth))(read_simulation(info["file"])), train.index[20], SPEC)
    for got, want in zip(sample, expected):
        assert_array_equal(got.numpy(), want)
    mapped = PatchDataset(train.files, spec=SPEC, memory_map=True)
    assert_array_equal(mapped[20].depths.numpy(), sample.depths.numpy())
    loader = torch.utils.data.DataLoader(train, batch_size=16, num_workers=2)
    batches = list(loader)
    assert batches[0].terrain.shape == (16, 1, 33, 33) and batches[0].depths.shape == (16, 2, 8, 8)
    assert_array_equal(torch.cat([b.depth_change for b in batches]).numpy(),
                       np.stack([train[i].depth_change.numpy() for i in range(len(train))]))
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['tiny'\]"):
        load_splits(tmp_path, sample_spec=SPEC, split_spec=SplitSpec(small_plans=4, test_plans=2), names=["tiny"])


def test_preview_figure(tmp_path):
    write_project(tmp_path, "alpha", 1)
    dataset = PatchDataset(sorted((tmp_path / "alpha").glob("*.h5")), spec=SPEC, name="demo")
    figure = preview_samples(dataset, n=3, seed=1, title="demo")
    assert len(figure.axes) == 3 * 4 * 2  # panels and their colour bars
    out = tmp_path / "preview.png"
    figure.savefig(out)
    assert out.stat().st_size > 10_000


def test_a_model_learns_the_cell_size_only_of_the_plans_that_give_it_samples(tmp_path):
    fine = write_simulation(tmp_path / "fine" / "plan_000.h5", coded_simulation(project="fine"))
    dry = coded_simulation(project="coarse", wet=0.0)
    dry.cell_size_m, dry.terrain_spacing_m = 40.0, 10.0
    dry.water_depth[:] = 0.0  # no patch is wet: the plan gives no sample
    coarse = write_simulation(tmp_path / "coarse" / "plan_000.h5", dry)
    mixed = PatchDataset([fine, coarse], name="mixed", spec=SPEC)
    assert mixed.summary.samples_per_plan[1] == 0 and mixed.cell_sizes_m == [10.0, 40.0]
    assert mixed.trained_on() == {"delta_t_s": SPEC.delta_t_s, "cell_size_m": [10.0]}
    dry.water_depth[:] = 1.0
    both = PatchDataset([fine, write_simulation(coarse, dry)], name="both", spec=SPEC)
    assert both.trained_on()["cell_size_m"] == [10.0, 40.0]
    from_coarse = np.flatnonzero(both.index["plan"] == 1)
    assert both.subset(from_coarse[:2]).trained_on()["cell_size_m"] == [40.0]  # a subset's own plans
    assert both.subset([]).trained_on()["cell_size_m"] == []


def test_settings_a_researcher_gets_wrong_are_refused_or_made_to_work(tmp_path):
    with pytest.raises(ValueError, match=r"SampleSpec.snapshot_every_s=True must be a number of seconds >= 0"):
        SampleSpec(snapshot_every_s=True)
    for project, count in (("alpha", 6), ("beta", 4)):
        write_project(tmp_path, project, count)
    # a project the data folder does not hold: a typo, named
    with pytest.raises(ValueError, match=r"SampleSpec.projects: unknown project\(s\) \['alpah'\]; .* holds \['alpha', "
                                         r"'beta'\]"):
        load_splits(tmp_path, sample_spec=SampleSpec(projects={"alpah": {"patch_stride_cells": 4}}),
                    split_spec=SplitSpec(small_plans=2, test_plans=1))
    # a validation fraction that would leave no plan to train on: one plan each way
    splits = split_plans(discover_plans(tmp_path), SplitSpec(small_plans=2, test_plans=1, val_fraction=0.9))
    assert len(splits["small_train"]) == 1 and len(splits["small_val"]) == 1
    assert len(splits["alpha_train_val"]) == 5 and splits["big_train"] and splits["big_val"]
    # a subset says whose samples it chose, not the patches its parent dropped
    dataset = PatchDataset(sorted((tmp_path / "alpha").glob("*.h5")), spec=SPEC, name="alpha")
    assert str(dataset.subset(range(3), name="three").summary).startswith("three: 3 samples chosen from split 'alpha' over 6 plans")
