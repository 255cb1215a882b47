"""The pipeline's side of the profile: which notebook runs each stage, and reading a notebook's parameters
back from its namespace. The profile's schema itself is :mod:`floodlib.runs.profile` (re-exported here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from floodlib.runs.profile import (STAGES, DataConfig, HecRasPlanConfig, Profile, ProfileError, ProjectConfig,
                                   StageA, StageB, StageC, StageD, TerrainConfig, TerrainFetch, TrainSettings,
                                   check_data, check_stages, load_profile, validate_stage)

NOTEBOOKS = {"A": "A_train.ipynb", "B": "B_tune.ipynb", "C": "C_train_big.ipynb", "D": "D_evaluate.ipynb"}


def parameters_from_namespace(stage: str, namespace: dict[str, Any]) -> BaseModel:
    """A notebook's config from its globals after the parameters cell (and papermill's injected cell).

    Every plain value defined in the notebook so far must be one of the stage's parameters: papermill
    only warns about a misspelt parameter, so an unknown name here is refused.
    """
    import types

    fields = STAGES[stage].model_fields
    values, unknown = {}, []
    for name, value in namespace.items():
        if name.startswith("_") or name in {"In", "Out", "exit", "quit", "get_ipython"}:
            continue
        if isinstance(value, types.ModuleType) or callable(value):
            continue
        if name in fields:
            values[name] = list(value) if isinstance(value, tuple) and fields[name].annotation is list else value
        else:
            unknown.append(name)
    where = f"notebook {NOTEBOOKS[stage]} parameters"
    if unknown:
        raise ProfileError(f"{where}: unknown parameter(s) {sorted(unknown)}; this notebook accepts {sorted(fields)}")
    return validate_stage(stage, values, where=where)


__all__ = ["NOTEBOOKS", "STAGES", "DataConfig", "HecRasPlanConfig", "Profile", "ProfileError", "ProjectConfig",
           "StageA", "StageB", "StageC", "StageD", "TerrainConfig", "TerrainFetch", "TrainSettings", "check_data",
           "check_stages", "load_profile", "parameters_from_namespace", "validate_stage"]
