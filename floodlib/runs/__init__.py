"""Run folders ``outputs/<run>/``: the typed profile a run was made from, its stage summaries, its data
splits and its trained models — read by evaluation, the viewer and the pipeline alike.

>>> from floodlib.runs import open_run, run_models, splits
>>> run = open_run("outputs/smoke")
>>> test = splits(run, ["big_test"])["big_test"]
>>> models = run_models(run.run_dir, ["C"])
"""

from floodlib.runs.folder import (PROFILE_FILE, STAGE_STATES, SUMMARY_FILE, Run, RunError, changed_settings, open_run,
                                  read_summary, splits, stage_state, stale_upstream, write_profile, write_summary)
from floodlib.runs.models import RunModel, run_models
from floodlib.runs.profile import STAGES, Profile, ProfileError, load_profile
from floodlib.runs.summaries import (BigModel, Headline, RankedModel, RolloutHeadline, StageASummary, StageBSummary, StageCSummary,
                                     StageDSummary, TunedConfiguration)

__all__ = ["PROFILE_FILE", "STAGE_STATES", "STAGES", "SUMMARY_FILE", "BigModel", "Headline", "Profile", "ProfileError", "RankedModel", "RolloutHeadline",
           "Run", "RunError", "RunModel", "StageASummary", "StageBSummary", "StageCSummary", "StageDSummary",
           "TunedConfiguration",
           "changed_settings", "load_profile", "open_run", "read_summary", "run_models", "splits", "stage_state", "stale_upstream", "write_profile",
           "write_summary"]
