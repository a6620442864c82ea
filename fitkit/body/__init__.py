"""fitkit.body: SMPL-format body models, their loaders and keypoint sets.

``load_body("open")`` gives the open body that ships with fitkit; ``load_body(path)`` reads
official SMPL files (``.pkl`` without chumpy, or a folder and a gender) and SMPL-format ``.npz``.
"""

from fitkit.body.keypoints import (
    KEYPOINT_SETS,
    OPENPOSE25_NAMES,
    OPENPOSE_VERTEX_NAMES,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    SMPL_TO_OPENPOSE25,
)
from fitkit.body.loaders import (
    OFFICIAL_FILE_NAMES,
    OPEN_BODY_PATH,
    BodyData,
    BodyFileError,
    find_body_file,
    read_body_file,
    read_smpl_pickle,
)
from fitkit.body.model import BodyModel, BodyOutput, load_body

__all__ = [
    "KEYPOINT_SETS",
    "OFFICIAL_FILE_NAMES",
    "OPENPOSE25_NAMES",
    "OPENPOSE_VERTEX_NAMES",
    "OPEN_BODY_PATH",
    "SMPL_JOINT_NAMES",
    "SMPL_PARENTS",
    "SMPL_TO_OPENPOSE25",
    "BodyData",
    "BodyFileError",
    "BodyModel",
    "BodyOutput",
    "find_body_file",
    "load_body",
    "read_body_file",
    "read_smpl_pickle",
]
