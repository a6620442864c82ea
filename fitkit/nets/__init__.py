"""fitkit.nets: networks, built from fitkit's own modules (no torchvision).

The displacement network of seed 003 (:class:`FlowNet`): image and renders of the current mesh
in, per-pixel 2D displacements from the render to the image out; its loss, render inputs and
checkpoints (its ground truth is :func:`fitkit.render.displacement_field`). ReFit of seed 001
(:class:`ReFit`), the recurrent feedback-update network. The HMR/SPIN regressor of seed 002
(:class:`Regressor`). One checkpoint format holds every
registered kind of network (:func:`save_network`, :func:`load_network`,
:func:`register_network`).
"""

from fitkit.nets.checkpoint import (
    NETWORK_KINDS,
    REFIT_KIND,
    CheckpointError,
    NetworkKind,
    load_flownet,
    load_network,
    read_checkpoint,
    register_network,
    save_flownet,
    save_network,
)
from fitkit.nets.flownet import (
    FLOWNET_CONFIGS,
    FlowNet,
    FlowNetConfig,
    RenderInputs,
    body_render_inputs,
    flow_loss,
    masked_epe,
    normalize_renders,
    predict_displacements,
    render_inputs,
)
from fitkit.nets.refit import REFIT_CONFIGS, ReFit, ReFitConfig
from fitkit.nets.regressor import (
    REGRESSOR_CONFIGS,
    REGRESSOR_KIND,
    Regressor,
    RegressorConfig,
    open_mean_params,
)

__all__ = [
    "FLOWNET_CONFIGS",
    "NETWORK_KINDS",
    "REFIT_CONFIGS",
    "REFIT_KIND",
    "REGRESSOR_CONFIGS",
    "REGRESSOR_KIND",
    "CheckpointError",
    "FlowNet",
    "FlowNetConfig",
    "NetworkKind",
    "ReFit",
    "ReFitConfig",
    "Regressor",
    "RegressorConfig",
    "RenderInputs",
    "body_render_inputs",
    "flow_loss",
    "load_flownet",
    "load_network",
    "masked_epe",
    "normalize_renders",
    "open_mean_params",
    "predict_displacements",
    "read_checkpoint",
    "register_network",
    "render_inputs",
    "save_flownet",
    "save_network",
]
