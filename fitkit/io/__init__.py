"""fitkit.io: files in and out: OpenPose JSON keypoints and parameter ``.npz`` files."""

from fitkit.io.adapters import INIT_LAYOUTS, convert_init, read_init_file
from fitkit.io.openpose import (
    NUM_BODY25,
    KeypointFileError,
    NoPersonError,
    OpenPoseError,
    person_boxes,
    read_openpose,
    read_openpose_people,
    select_person,
    write_openpose,
)
from fitkit.io.params import (
    CAMERA_KEYS,
    PARAM_SHAPES,
    ParamsFileError,
    read_params,
    validate_params,
    write_params,
)
from fitkit.io.safe_pickle import UnsafePickleError, safe_load, safe_torch_load

__all__ = [
    "CAMERA_KEYS",
    "INIT_LAYOUTS",
    "KeypointFileError",
    "NUM_BODY25",
    "PARAM_SHAPES",
    "NoPersonError",
    "OpenPoseError",
    "ParamsFileError",
    "UnsafePickleError",
    "convert_init",
    "person_boxes",
    "read_openpose",
    "read_openpose_people",
    "read_init_file",
    "read_params",
    "safe_load",
    "safe_torch_load",
    "select_person",
    "validate_params",
    "write_openpose",
    "write_params",
]
