"""Full-domain prediction: tile a domain with the standard and the dual grid of patches, close the
boundary rings of each step by iteration, and roll steps out over hours (see :mod:`.closure`).

    from floodlib.models import load_model
    from floodlib.data import read_simulation
    from floodlib.predict import predict_plan

    rollout = predict_plan(load_model("outputs/smoke/C/models/Arch_02/model.pth"),
                           read_simulation("plan.h5"), start_s=3600, steps=3)
    rollout.depths          # (4, rows, cols): the start, then each hour
    rollout.steps[0].residuals

From the shell: ``python -m floodlib.predict MODEL PLAN.h5 --start 60 --hours 3 --out out.h5``.
"""

from floodlib.predict.boundary import Boundary, EdgeBoundary, EdgeSegment, StoredBoundary, read_boundary
from floodlib.predict.closure import PASS_ORDER, DomainPredictor, Rollout, StepResult
from floodlib.predict.plan import STEP_S, plan_start_frame, predict_plan, rollout_simulation, write_rollout
from floodlib.predict.tiling import GRIDS, PredictError, Tiling

__all__ = ["GRIDS", "PASS_ORDER", "STEP_S", "Boundary", "DomainPredictor", "EdgeBoundary", "EdgeSegment",
           "PredictError", "Rollout", "StepResult", "StoredBoundary", "Tiling", "plan_start_frame", "predict_plan",
           "read_boundary", "rollout_simulation", "write_rollout"]
