"""Batches assembled where the model runs: the same samples as PatchDataset, in the same order, on every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from floodlib.data.batches import BatchLoader, DeviceSplit, EpochOrder, HostSplit, resolve_placement, split_bytes
from floodlib.data.dataset import PatchDataset, Sample
from floodlib.data.samples import SampleSpec
from floodlib.data.store import Simulation, write_simulation

# Eight snapshots: every transform twice, both grids, and a dry rule that drops some patches.
SPEC = SampleSpec(snapshot_times_s=tuple(float(60 * k) for k in range(8)), delta_t_s=120.0, dry_threshold_m=40.0)


def _plan(k: int, rows: int, cols: int) -> Simulation:
    """Distinct values everywhere (so any misplaced cell shows), a dry corner, and NaN outside the area."""
    rng = np.random.default_rng(k)
    frames = 11
    depth = rng.random((frames, rows, cols)).astype(np.float32) * np.linspace(0, 2, cols, dtype=np.float32)
    depth += np.arange(frames, dtype=np.float32)[:, None, None] * 0.01
    depth[:, :32] = 0.0  # a dry strip: its patches are dropped
    depth[:, :, -20:] = np.nan  # outside the model's area: patches touching it are excluded
    terrain = (100 + rng.standard_normal((rows * 10 + 1, cols * 10 + 1)).cumsum(1) * 0.01).astype(np.float32)
    return Simulation(project="p", plan=f"plan_{k}", terrain=terrain, water_depth=depth, cell_size_m=10.0,
                      terrain_spacing_m=1.0, output_interval_s=60.0, source="test")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> PatchDataset:
    folder = tmp_path_factory.mktemp("batches")
    files = []
    for k, (rows, cols) in enumerate(((96, 112), (64, 64), (80, 128))):  # plans of different shapes
        files.append(folder / f"plan_{k}.h5")
        write_simulation(files[-1], _plan(k, rows, cols))
    data = PatchDataset(files, spec=SPEC, name="mixed")
    assert data.summary.dry_dropped > 0 and data.summary.masked_dropped > 0
    assert set(data.index["transform"]) == {0, 1, 2, 3}
    return data


def _stack(dataset: PatchDataset, indices) -> Sample:
    items = [dataset[int(i)] for i in indices]
    return Sample(*(torch.stack([getattr(item, f) for item in items]) for f in Sample._fields))


@pytest.mark.parametrize("split_class", [DeviceSplit, HostSplit])
def test_every_sample_equals_patch_dataset(dataset, split_class):
    """Sample by sample, every field bit for bit — the device path is the one CUDA runs, here on the CPU."""
    split = split_class(dataset, "cpu") if split_class is DeviceSplit else split_class(dataset)
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    cut = split.batch(indices)
    expected = _stack(dataset, indices)
    for field in Sample._fields:
        assert torch.equal(getattr(cut, field), getattr(expected, field)), field


def test_overlapping_patches_and_frequent_snapshots_are_cut_alike(dataset):
    """More samples per simulation (a snapshot every 2 min, origins every 16 cells): the device path still
    gives PatchDataset's samples bit for bit."""
    spec = SampleSpec(snapshot_every_s=120.0, delta_t_s=120.0, dry_threshold_m=40.0, patch_stride_cells=16)
    dense = PatchDataset(dataset.files, spec=spec, name="dense")
    assert len(dense) > 2 * len(dataset)
    indices = torch.randperm(len(dense), generator=torch.Generator().manual_seed(1))[:200]
    cut, expected = DeviceSplit(dense, "cpu").batch(indices), _stack(dense, indices)
    for field in Sample._fields:
        assert torch.equal(getattr(cut, field), getattr(expected, field)), field


def test_loader_gives_the_dataloader_batches_in_order(dataset):
    """Same epoch order as a DataLoader with the same sampler; a new order per epoch, the same after a restart."""
    for epoch in (0, 3):
        loader = BatchLoader(dataset, batch_size=7, shuffle=True, seed=5)
        loader.sampler.set_epoch(epoch)
        sampler = EpochOrder(len(dataset), seed=5)
        sampler.set_epoch(epoch)
        reference = torch.utils.data.DataLoader(dataset, batch_size=7, sampler=sampler)
        batches = list(loader)
        assert len(batches) == len(loader) == len(reference)
        for ours, theirs in zip(batches, reference):
            for field in Sample._fields:
                assert torch.equal(getattr(ours, field), getattr(theirs, field))
    first = BatchLoader(dataset, batch_size=7, shuffle=True, seed=5).batch_indices()
    loader = BatchLoader(dataset, batch_size=7, shuffle=True, seed=5)
    loader.sampler.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(first, loader.batch_indices()))


def test_ranks_share_every_global_batch(dataset):
    """Under data parallelism the ranks' k-th batches together are the single process's k-th batch."""
    whole = BatchLoader(dataset, batch_size=10, shuffle=True, seed=1).batch_indices()
    ranks = [BatchLoader(dataset, batch_size=10, shuffle=True, seed=1, rank=r, world_size=3).batch_indices()
             for r in range(3)]
    assert all(len(r) == len(whole) for r in ranks)
    for k, batch in enumerate(whole):
        parts = [r[k] for r in ranks]
        assert all(len(p) > 0 for p in parts)
        if len(batch) >= 3:
            assert torch.equal(torch.cat(parts), batch)
    # Evaluation: every sample exactly once over the ranks, none repeated to even them out.
    size = next(b for b in range(7, len(dataset)) if 0 < len(dataset) % b < 3)  # a last batch of 1 or 2
    tail, batches = len(dataset) % size, -(-len(dataset) // size)
    shares = [BatchLoader(dataset, batch_size=size, rank=r, world_size=3, even=False) for r in range(3)]
    seen = torch.cat([torch.cat(s.batch_indices()) for s in shares])
    assert sorted(seen.tolist()) == list(range(len(dataset)))
    assert [len(s) for s in shares] == [batches] * tail + [batches - 1] * (3 - tail)
    # More ranks than samples to evaluate: a rank with none steps through one empty batch, so the ranks'
    # end-of-epoch reductions meet; the samples still count once.
    two = dataset.subset([4, 9], "two")
    shares = [BatchLoader(two, batch_size=16, rank=r, world_size=4, even=False) for r in range(4)]
    assert [len(s) for s in shares] == [1, 1, 1, 1]
    assert [s.batch_indices()[0].tolist() for s in shares] == [[0], [1], [], []]
    for placement in ("host", "device"):
        empty = next(iter(BatchLoader(two, batch_size=16, rank=3, world_size=4, even=False, placement=placement)))
        assert [tuple(t.shape) for t in empty] == [(0, 1, 321, 321), (0, 2, 32, 32), (0, 1, 32, 32)], placement


def test_prefetching_gives_the_same_batches_stops_cleanly_and_passes_errors_on(dataset):
    """The background thread that fills batches ahead for a GPU, exercised on the CPU."""
    loader = BatchLoader(dataset, batch_size=6, shuffle=True, prefetch=2)
    batches = list(loader._prefetched(loader.split, loader.batch_indices()))
    for ours, theirs in zip(batches, BatchLoader(dataset, batch_size=6, shuffle=True, prefetch=0), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    iterator = loader._prefetched(loader.split, loader.batch_indices())
    next(iterator)
    iterator.close()  # the consumer stops early: the producer thread must not hang

    class Failing(HostSplit):
        def batch(self, indices):
            raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(loader._prefetched(Failing(dataset), loader.batch_indices()))


def test_a_subset_is_a_patch_dataset_of_those_samples(dataset):
    """What fit takes for a smaller training set: the chosen samples, in order, on either path."""
    chosen = [5, 0, 17, 3, len(dataset) - 1]
    part = dataset.subset(chosen, "five")
    assert isinstance(part, PatchDataset) and len(part) == 5 and part.name == "five"
    assert part.summary.samples == 5 and sum(part.summary.samples_per_plan) == 5
    assert dataset.summary.samples == len(dataset)  # the original is untouched
    expected = _stack(dataset, chosen)
    for cut in (DeviceSplit(part, "cpu").batch(torch.arange(5)), next(iter(BatchLoader(part, batch_size=5)))):
        for field in Sample._fields:
            assert torch.equal(getattr(cut, field), getattr(expected, field)), field


def test_placement(dataset):
    assert resolve_placement(dataset, "cpu") == "host"
    assert resolve_placement(dataset, "cpu", "device") == "device"
    with pytest.raises(ValueError, match=r"placement='gpu'.*expected one of"):
        resolve_placement(dataset, "cpu", "gpu")
    split = DeviceSplit(dataset, "cpu")
    held = 4 * (split.terrain.numel() + split.depth.numel())
    assert held <= split_bytes(dataset) <= held + 64 * len(dataset)
    # Only the frames that samples read: 8 snapshots + their next frames, not all 11 frames of each plan.
    assert split.depth.numel() < 3 * 11 * 96 * 128
