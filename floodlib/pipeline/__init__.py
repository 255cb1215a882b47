"""The pipeline: parameter profiles, the stage notebooks' library calls, and the papermill runner.

``python -m floodlib.pipeline params/smoke.yaml`` (or the ``floodlib`` command) runs A -> B -> C -> D.
"""

from floodlib.pipeline.config import (NOTEBOOKS, STAGES, Profile, ProfileError, load_profile,
                                      parameters_from_namespace, validate_stage)

__all__ = ["NOTEBOOKS", "STAGES", "Profile", "ProfileError", "load_profile", "parameters_from_namespace",
           "validate_stage"]
