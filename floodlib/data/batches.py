"""Batches assembled where the model runs.

:class:`BatchLoader` yields the batches of a :class:`~floodlib.data.dataset.PatchDataset` — the same
samples, in the same order, as a ``DataLoader`` over it would — but cuts each batch at once instead of
sample by sample and collating:

- ``placement="device"`` (the default on CUDA when the split fits in free GPU memory): the split's
  per-plan terrain and only the depth frames its samples use go to the device once
  (:class:`DeviceSplit`); every batch is then cut there by batched indexing, with the snapshots' flips
  and quarter turns folded into the gather indices.
- ``placement="host"`` (CPU, or a split too large for the GPU): each sample is sliced from the plan
  arrays straight into its slot of one batch buffer (:class:`HostSplit`) — no per-sample tensors, no
  collate copy; for a GPU the buffer is pinned, filled in a background thread a batch or two ahead while
  the model works, and copied asynchronously.

The epoch order comes from :class:`EpochOrder` (a function of seed and epoch alone, so a resumed run
replays the same batches); with several processes (DDP) each rank takes its share of every global batch.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Iterator

import numpy as np
import torch

from floodlib.data.dataset import PatchDataset, Sample
from floodlib.data.samples import apply_transform, cut_sample

PLACEMENTS = ("auto", "device", "host")

#: Share of the GPU's free memory a split's arrays may take on the device; the rest is left to the model.
DEVICE_MEMORY_SHARE = 0.5


class EpochOrder:
    """The sample order of each epoch: a random permutation derived from (seed, epoch) alone, or 0..N-1.

    Lightning calls :meth:`set_epoch` at the start of every epoch (it looks for a ``sampler`` attribute
    on the loader), so a resumed run replays exactly the batches of the interrupted one.
    """

    def __init__(self, length: int, *, seed: int = 0, shuffle: bool = True):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """(N,) int64 sample indices of the current epoch."""
        if not self.shuffle:
            return torch.arange(self.length)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.length, generator=generator)

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.length


def _source_offsets(size: int) -> np.ndarray:
    """(4, 2, size, size) int64: for each snapshot transform, the (row, col) inside the untransformed patch
    that each output pixel reads. Taken from :func:`apply_transform` itself, so the two cannot disagree."""
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"))
    return np.stack([np.ascontiguousarray(apply_transform(grid, t)) for t in range(4)]).astype(np.int64)


def _frame_keys(dataset: PatchDataset) -> np.ndarray:
    """One int64 key per (plan, frame) that a sample reads, for its snapshot n then for n + dt: (2N,)."""
    plans = dataset.index["plan"].astype(np.int64) * 2**31
    return np.concatenate([plans + dataset.index["frame"], plans + dataset.index["next_frame"]])


def split_bytes(dataset: PatchDataset) -> int:
    """Bytes a :class:`DeviceSplit` of ``dataset`` takes: the padded terrain of every plan and the depth
    frames its samples use (float32), and the per-sample offsets."""
    shapes = [(t.shape, d.shape[1:]) for t, d in dataset._plan_arrays()]
    if not shapes:
        return 0
    terrain = len(shapes) * max(s[0][0] for s in shapes) * max(s[0][1] for s in shapes)
    frame = max(s[1][0] for s in shapes) * max(s[1][1] for s in shapes)
    return 4 * (terrain + len(np.unique(_frame_keys(dataset))) * frame) + 32 * len(dataset)


class DeviceSplit:
    """A split's arrays on one device, and every batch cut there by batched indexing.

    Holds the terrain of every plan (padded to a common shape) and the depth frames the samples use, as
    flat float32 tensors; a sample is a set of flat offsets: its origin's offset plus, per output pixel,
    the offset its transform reads. Batches equal those of :class:`~floodlib.data.dataset.PatchDataset`
    exactly (they are copies of the same values).
    """

    def __init__(self, dataset: PatchDataset, device: str | torch.device):
        self.device = torch.device(device)
        self.dataset = dataset
        spec = dataset.spec
        self.size, self.ratio, self.ring = spec.patch_cells, spec.terrain_ratio, spec.ring_cells
        arrays = dataset._plan_arrays()
        index = dataset.index
        n_plans = len(arrays)
        terrain_rows = max(t.shape[0] for t, _ in arrays)
        terrain_cols = max(t.shape[1] for t, _ in arrays)
        depth_rows = max(d.shape[1] for _, d in arrays)
        depth_cols = max(d.shape[2] for _, d in arrays)

        terrain = torch.zeros(n_plans, terrain_rows, terrain_cols, dtype=torch.float32, device=self.device)
        for plan, (plan_terrain, _) in enumerate(arrays):
            rows, cols = plan_terrain.shape
            terrain[plan, :rows, :cols] = torch.from_numpy(np.asarray(plan_terrain, dtype=np.float32)).to(self.device)
        self.terrain = terrain.view(-1)

        # Only the frames some sample reads (snapshot n or n + dt) travel: one slot each.
        plans = index["plan"].astype(np.int64)
        used, slot_of = np.unique(_frame_keys(dataset), return_inverse=True)
        depth = torch.empty(len(used), depth_rows, depth_cols, dtype=torch.float32, device=self.device)
        for slot, key in enumerate(used):
            plan, frame = divmod(int(key), 2**31)
            frame_array = arrays[plan][1][frame]
            rows, cols = frame_array.shape
            depth[slot, :rows, :cols] = torch.from_numpy(np.asarray(frame_array, dtype=np.float32)).to(self.device)
        self.depth = depth.view(-1)
        slot_now, slot_next = slot_of[:len(index)], slot_of[len(index):]

        row = index["row"].astype(np.int64)
        col = index["col"].astype(np.int64)
        terrain_origin = plans * terrain_rows * terrain_cols + row * self.ratio * terrain_cols + col * self.ratio
        depth_origin = row * depth_cols + col
        to_device = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self.terrain_origin = to_device(terrain_origin)
        self.now_origin = to_device(slot_now * depth_rows * depth_cols + depth_origin)
        self.next_origin = to_device(slot_next * depth_rows * depth_cols + depth_origin)
        self.transform = to_device(index["transform"].astype(np.int64))
        points = spec.terrain_points
        source = _source_offsets(points)
        self.terrain_offsets = to_device(source[:, 0] * terrain_cols + source[:, 1])  # (4, T, T)
        source = _source_offsets(self.size)
        self.depth_offsets = to_device(source[:, 0] * depth_cols + source[:, 1])  # (4, P, P)
        interior = torch.zeros(self.size, self.size, dtype=torch.bool)
        interior[self.ring:-self.ring, self.ring:-self.ring] = True
        self.interior = interior.to(self.device)

    def __len__(self) -> int:
        return len(self.transform)

    def batch(self, indices: torch.Tensor) -> Sample:
        """The samples ``indices`` (int64, on this device) as one batch on this device."""
        transform = self.transform[indices]
        terrain = self.terrain.take(self.terrain_origin[indices, None, None] + self.terrain_offsets[transform])
        offsets = self.depth_offsets[transform]
        now = self.depth.take(self.now_origin[indices, None, None] + offsets)
        later = self.depth.take(self.next_origin[indices, None, None] + offsets)
        change = later - now
        ring = later.masked_fill_(self.interior, 0.0)
        return Sample(terrain.unsqueeze(1), torch.stack([ring, now], dim=1), change.unsqueeze(1))


class HostSplit:
    """Batches cut on the host: each sample sliced from the plan arrays straight into its slot of one batch
    buffer (pinned when ``pin_memory``, for an asynchronous copy to a GPU)."""

    def __init__(self, dataset: PatchDataset, *, pin_memory: bool = False):
        self.dataset = dataset
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor) -> Sample:
        dataset = self.dataset
        spec = dataset.spec
        points, size = spec.terrain_points, spec.patch_cells
        count = len(indices)
        out = Sample(*(torch.empty(shape, dtype=torch.float32, pin_memory=self.pin_memory)
                       for shape in ((count, 1, points, points), (count, 2, size, size), (count, 1, size, size))))
        arrays = dataset._plan_arrays()
        views = [t.numpy() for t in out]
        for slot, item in enumerate(indices.tolist()):
            entry = dataset.index[item]
            terrain, depth = arrays[int(entry["plan"])]
            cut_sample(terrain, depth, entry, spec, out=(views[0][slot], views[1][slot], views[2][slot]))
        return out


def _fits_on_device(dataset: PatchDataset, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return split_bytes(dataset) <= DEVICE_MEMORY_SHARE * free


def resolve_placement(dataset: PatchDataset, device: str | torch.device, placement: str = "auto") -> str:
    """``"device"`` or ``"host"`` for ``placement`` (``"auto"``: on the device when it is a GPU with room for
    the split's arrays, else on the host)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r}; expected one of {list(PLACEMENTS)}")
    device = torch.device(device)
    if placement != "auto":
        return placement
    if device.type == "cuda" and _fits_on_device(dataset, device):
        return "device"
    return "host"


class BatchLoader:
    """The batches of an epoch of ``dataset``, assembled where the model runs.

    Parameters
    ----------
    dataset : the split.
    batch_size : samples per batch — the global batch when ``world_size`` > 1: rank r takes the r-th of
        ``world_size`` near-equal parts of every global batch, so the ranks together see exactly the
        batches one process would.
    device : where the batches are used.
    shuffle, seed : a random order per epoch from (seed, epoch) (:class:`EpochOrder`), else 0..N-1.
    placement : ``"device"``, ``"host"`` or ``"auto"`` (see :func:`resolve_placement`).
    rank, world_size : this process's share under data parallelism.
    even : every rank gets the same number of batches, as DDP's gradient synchronisation needs: a last
        global batch of fewer samples than ranks is topped up with the epoch's first samples. Without it
        (evaluation) a rank whose share is empty skips that batch, and every sample counts once (a rank
        with no sample at all gets one empty batch).
    prefetch : host placement for a GPU: batches prepared ahead in a background thread (0: none).
    """

    def __init__(self, dataset: PatchDataset, *, batch_size: int, device: str | torch.device = "cpu",
                 shuffle: bool = False, seed: int = 0, placement: str = "auto", rank: int = 0, world_size: int = 1,
                 even: bool = True, prefetch: int = 2):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in 0..world_size-1 (world_size={world_size})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.sampler = EpochOrder(len(dataset), seed=seed, shuffle=shuffle)
        self.batch_sampler = None  # read by Lightning beside ``sampler``, as on a DataLoader
        self.rank, self.world_size, self.even = rank, world_size, even
        self.prefetch = prefetch
        self.placement = resolve_placement(dataset, self.device, placement)
        self._split: DeviceSplit | HostSplit | None = None

    @property
    def split(self) -> DeviceSplit | HostSplit:
        if self._split is None:  # built on first use, so constructing a loader moves nothing
            if self.placement == "device":
                self._split = DeviceSplit(self.dataset, self.device)
            else:
                self._split = HostSplit(self.dataset, pin_memory=self.device.type == "cuda")
        return self._split

    def __len__(self) -> int:
        if self.world_size > 1 and not self.even:
            return len(self.batch_indices())
        return math.ceil(len(self.dataset) / self.batch_size)

    def batch_indices(self) -> list[torch.Tensor]:
        """This rank's sample indices of every batch of the current epoch."""
        order = self.sampler.order()
        batches = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            if self.world_size > 1:
                if self.even and len(batch) < self.world_size:
                    batch = torch.cat([batch, order[:self.world_size - len(batch)]])
                batch = batch.tensor_split(self.world_size)[self.rank]
                if len(batch) == 0:
                    continue
            batches.append(batch)
        if not batches and self.world_size > 1 and len(order):
            # A rank whose share of a small evaluation split is empty still steps through the epoch (with
            # an empty batch), so that the ranks' end-of-epoch reductions meet.
            batches.append(order[:0])
        return batches

    def __iter__(self) -> Iterator[Sample]:
        batches = self.batch_indices()
        split = self.split
        if isinstance(split, DeviceSplit):
            for indices in batches:
                yield split.batch(indices.to(self.device, non_blocking=True))
            return
        # On a CPU the model's own threads use every core: a producer thread would only add GIL hand-offs
        # (measured: slower than cutting each batch when it is asked for, at the smoke profile's batch 8).
        if self.prefetch <= 0 or self.device.type == "cpu":
            for indices in batches:
                yield self._to_device(split.batch(indices))
            return
        yield from self._prefetched(split, batches)

    def _to_device(self, batch: Sample) -> Sample:
        if self.device.type == "cpu":
            return batch
        return Sample(*(t.to(self.device, non_blocking=True) for t in batch))

    def _prefetched(self, split: HostSplit, batches: list[torch.Tensor]) -> Iterator[Sample]:
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for indices in batches:
                    if stop.is_set():
                        return
                    ready.put(split.batch(indices))
                ready.put(None)
            except BaseException as error:  # handed to the consumer, raised there
                ready.put(error)

        worker = threading.Thread(target=produce, name="floodlib-batches", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._to_device(item)
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)


def batches_of(dataset, *, batch_size: int, device: str | torch.device = "cpu"):
    """Batches of ``dataset`` in order: a :class:`BatchLoader` for a PatchDataset (cut where the model
    runs), a DataLoader for any other dataset of :class:`~floodlib.data.dataset.Sample` items."""
    if isinstance(dataset, PatchDataset):
        return BatchLoader(dataset, batch_size=batch_size, device=device)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
