"""Simulations to samples: the simulation store, sources that fill it, and the patch datasets cut from it.

- :mod:`floodlib.data.store` — one HDF5 file per plan (``Simulation``, ``write_simulation``, ``read_simulation``);
- :mod:`floodlib.data.geotiff` — terrain rasters (GeoTIFF DEMs);
- :mod:`floodlib.data.export` — depth, maximum-depth and error maps of any simulation file as GeoTIFFs, for a GIS;
- :mod:`floodlib.data.fetch` — data files fetched from a package registry (a member of a pinned wheel, checksummed);
- :mod:`floodlib.data.hecras` — HEC-RAS 2D plan results into the store;
- :mod:`floodlib.data.terrain`, :mod:`floodlib.data.simulate` — the built-in simulator (landlab OverlandFlow)
  over procedural valleys or real DEMs, the embedded default data source;
- :mod:`floodlib.data.samples` — the reference's sample definition (``SampleSpec``, ``index_plan``, ``cut_sample``);
- :mod:`floodlib.data.dataset` — splits by plan and the lazy ``PatchDataset``;
- :mod:`floodlib.data.preview` — preview figures of a split.
"""

from floodlib.data.dataset import (TEST_PROJECTS_SPLIT, PatchDataset, Sample, SplitSpec, SplitSummary, discover_plans,
                                   load_splits, split_plans)
from floodlib.data.fetch import FetchError, WheelMember, fetch_wheel_member
from floodlib.data.hecras import convert_hecras, hecras_names, list_2d_areas, read_hecras
from floodlib.data.preview import preview_samples
from floodlib.data.simulate import Hydrograph, PlanSpec, ProjectSpec, plan_specs, simulate_plan, simulate_project
from floodlib.data.samples import SampleSpec, apply_transform, cut_sample, index_plan
from floodlib.data.store import Simulation, SimulationFileError, read_simulation, write_simulation
from floodlib.data.terrain import DemSource, ValleyParams

__all__ = [
    "DemSource", "FetchError", "Hydrograph", "PlanSpec", "ProjectSpec", "TEST_PROJECTS_SPLIT", "ValleyParams",
    "WheelMember", "fetch_wheel_member", "plan_specs", "simulate_plan",
    "simulate_project", "PatchDataset", "Sample", "SampleSpec", "Simulation", "SimulationFileError", "SplitSpec", "SplitSummary",
    "apply_transform", "convert_hecras", "cut_sample", "discover_plans", "hecras_names", "index_plan", "list_2d_areas", "load_splits", "preview_samples",
    "read_hecras", "read_simulation", "split_plans", "write_simulation",
]
