"""fitkit.nets: networks, built from fitkit's own modules (no torchvision).

The displacement network of seed 003 (:class:`FlowNet`): image and renders of the current mesh
in, per-pixel 2D displacements from the render to the image out; its loss, ground truth, render
inputs and checkpoints.
"""

from fitkit.nets.checkpoint import CheckpointError, load_flownet, read_checkpoint, save_flownet
from fitkit.nets.flownet import (
    FLOWNET_CONFIGS,
    FlowNet,
    FlowNetConfig,
    RenderInputs,
    body_render_inputs,
    displacement_targets,
    flow_loss,
    masked_epe,
    normalize_renders,
    predict_displacements,
    render_inputs,
)

__all__ = [
    "FLOWNET_CONFIGS",
    "CheckpointError",
    "FlowNet",
    "FlowNetConfig",
    "RenderInputs",
    "body_render_inputs",
    "displacement_targets",
    "flow_loss",
    "load_flownet",
    "masked_epe",
    "normalize_renders",
    "predict_displacements",
    "read_checkpoint",
    "render_inputs",
    "save_flownet",
]
