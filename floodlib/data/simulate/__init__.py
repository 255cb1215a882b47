"""The built-in flood simulator: landlab's ``OverlandFlow`` (de Almeida local inertial scheme) on 10 m cells.

A **plan** (:class:`PlanSpec`) is one terrain and one inflow hydrograph; :func:`simulate_plan` runs it
and returns a :class:`floodlib.data.store.Simulation`. A **project** (:class:`ProjectSpec`) is a family
of plans drawn deterministically from one seed (:func:`plan_specs`); :func:`simulate_project` runs them
in parallel processes and writes ``<out_dir>/<project>/<plan>.h5``. The parts: :mod:`.spec` (hydrographs,
plans, projects), :mod:`.solver` (one plan through landlab) and :mod:`.project` (a project's plans in worker
processes).

Model set-up (what the stored ``source``, ``event`` and ``extra`` attributes record):

- **Cell elevation** — the mean of the cell's 1 m terrain points (:func:`floodlib.data.terrain.cell_elevation`).
  The solver has no sub-grid bathymetry: a cell holds ``area * depth`` of water, so the mean elevation is
  the one that gives a submerged cell the right storage volume, and mass, depths and the wave's travel time
  follow from storage. The minimum would keep sub-cell ditches conveying, but it treats every cell as if
  its lowest 1 m point filled it, overstating storage (by 0.2-0.5 m of depth per cell on rough
  floodplains) and drowning the roughness the 1 m terrain is there to carry. The procedural channel is
  at least 2.5 cells wide, so the mean keeps it a continuous low line; for DEM terrain, channels narrower
  than a cell lose conveyance, a known limit of a 10 m grid without sub-grid hydraulics.
- **Inflow** — there is no discharge boundary in ``OverlandFlow``: the hydrograph ``Q(t)`` (m³/s) enters as
  a source (``rainfall_intensity``, m/s) spread evenly over a strip of cells along the inflow edge,
  ``inflow_width_m`` wide and ``INFLOW_STRIP_CELLS`` deep. Spreading it keeps the depth at the source,
  and so the stable time step ``alpha * dx / sqrt(g * h_max)``, from collapsing.
- **Outflow** — the outflow edge is open, the other three closed. The grid carries one ring of ghost
  cells outside the stored cells; on the open edge each ghost is ``outfall_slope * 10 m`` lower than its
  neighbour and takes its neighbour's depth before every step, a normal-depth (zero depth gradient)
  boundary: water leaves at the rate the downstream slope drives it, and only leaves — a step's discharge
  carried inward through a ghost link by the scheme's inertia (water from nowhere, seen where a DEM
  window drains away from its open edge) is taken back from the cell it entered. Outflow volume is
  measured directly, as the sum over time steps of the discharge on the links into the ghost cells times
  the cell width and the step.
- **Mass balance** — inflow volume (the source actually applied) against stored volume change plus
  outflow volume; the residual is the mass the solver itself creates or destroys (``steep_slopes`` resets
  depths below ``h_init`` to ``h_init / 1000``). A plan whose relative residual exceeds
  ``MAX_MASS_ERROR`` (1 %) fails and nothing is written.
- **Stored depths** — ``water_depth`` every ``output_interval_s`` from t = 0, float32, m. Depths at or
  below the solver's thin film ``H_INIT_M`` are stored as 0 (dry); the volume so removed is reported.
"""

from floodlib.data.simulate.project import PlanFailedError, simulate_project
from floodlib.data.simulate.solver import FlowResult, inflow_strip, run_overland_flow, simulate_plan
from floodlib.data.simulate.spec import (DEFAULT_DURATION_S, DEFAULT_OUTPUT_INTERVAL_S, MAX_MASS_ERROR, Hydrograph,
                                         PlanSpec, ProjectSpec, SimulationFailedError, plan_specs)

__all__ = ["DEFAULT_DURATION_S", "DEFAULT_OUTPUT_INTERVAL_S", "MAX_MASS_ERROR", "FlowResult", "Hydrograph",
           "PlanFailedError", "PlanSpec", "ProjectSpec", "SimulationFailedError", "inflow_strip", "plan_specs",
           "run_overland_flow", "simulate_plan", "simulate_project"]
