"""The reference's seven architectures, three terrain downsamplers, the registry that builds them and their
checkpoints.

>>> from floodlib.models import create_model, list_models, load_model
>>> model = create_model("Arch_04", downsampler="alternating")
>>> model = load_model("outputs/smoke/C/models/Arch_04_tuned/model.pth")
"""

from floodlib.models.attention import SelfAttention2d
from floodlib.models.base import FloodModel, check_inputs
from floodlib.models.constants import DEPTH_CHANNELS, PATCH_CELLS, TERRAIN_POINTS
from floodlib.models.downsamplers import (
    AlternatingDownsampler,
    AlternatingStrideConv2d,
    CubicDownsampler,
    K11S10Downsampler,
    alternating_stride_conv2d,
    create_downsampler,
    list_downsamplers,
)
from floodlib.models.init import INIT_SCHEMES, init_weights
from floodlib.models.reference import use_reference_layers
from floodlib.models.registry import (
    create_model,
    list_models,
    model_aliases,
    register_model,
    resolve_model_name,
)

# Importing the architecture modules registers them.
from floodlib.models import arch_02, arch_03, arch_04, arch_05, arch_07, arch_08, arch_09  # noqa: E402,F401
from floodlib.models.checkpoints import CheckpointError, load_model, read_checkpoint, save_model  # noqa: E402

__all__ = [
    "AlternatingDownsampler", "AlternatingStrideConv2d", "CheckpointError", "CubicDownsampler", "DEPTH_CHANNELS", "FloodModel",
    "INIT_SCHEMES", "K11S10Downsampler", "PATCH_CELLS", "SelfAttention2d", "TERRAIN_POINTS",
    "alternating_stride_conv2d", "check_inputs", "create_downsampler", "create_model", "init_weights",
    "list_downsamplers", "list_models", "load_model", "model_aliases", "read_checkpoint", "register_model",
    "resolve_model_name", "save_model", "use_reference_layers",
]
