"""``BodyModel``: an SMPL-format body, and ``load_body``.

The forward pass is fitkit's (:mod:`fitkit.body.skinning`: every vertex or only those a fitter
needs); the model also holds the same arrays as an ``smplx.SMPL`` (``body.smpl``), the reference
its results are tested against.

The model holds no parameters sized by batch: every forward call takes ``global_orient``,
``body_pose``, ``betas`` and ``transl`` (missing ones are zero) and returns a ``BodyOutput``.
Outputs follow SMPL's semantics and are not root-aligned: the body rotates about its pelvis joint
(which sits where the rest pose puts it, not at the origin) and ``transl`` is added last.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import numpy as np
import smplx
import torch
from smplx.utils import Struct
from torch import Tensor, nn

from fitkit.body.keypoints import (
    FORMAT_ROWS,
    FORMAT_VERTICES,
    OPENPOSE_VERTEX_NAMES,
    SAMPLED_VERTICES,
    SMPL_PARENTS,
    SMPL_TO_OPENPOSE25,
    KeypointSelector,
    body_keypoint_sets,
    keypoint_set_names,
    sample_vertex_ids,
)
from fitkit.body.loaders import (
    NUM_BETAS,
    NUM_JOINTS,
    NUM_POSE_BASIS,
    BodyData,
    read_body_file,
    resolve_body_path,
)
from fitkit.body.skinning import skinning_from_arrays
from fitkit.io.params import PARAM_SIZES


@dataclass
class BodyOutput:
    """What ``BodyModel.forward`` returns.

    Attributes:
        vertices: ``(B, K, 3)`` posed vertices (meters): all V of them, or the K of
            ``vertex_ids`` when the forward pass evaluated only those.
        joints: ``(B, 24, 3)`` posed SMPL joints.
        selector: the vertex-based keypoints of the body that produced this output.
        vertex_ids: ``(K,)`` long, the body's ids of the rows of ``vertices``, or ``None`` when
            ``vertices`` holds every vertex.
        vertex_position: ``(V,)`` long, the row of each body vertex in ``vertices`` (K for the
            vertices not evaluated), with ``vertex_ids``.
    """

    vertices: Tensor
    joints: Tensor
    selector: KeypointSelector
    vertex_ids: Tensor | None = None
    vertex_position: Tensor | None = None

    def vertices_at(self, ids: Tensor) -> Tensor:
        """The posed vertices of the body's vertex ids ``ids``.

        Args:
            ids: ``(N,)`` or ``(B, N)`` long vertex ids of the body.
        Returns:
            ``(B, N, 3)``. On a sparse output (``vertex_ids``) an id it did not evaluate maps
            past the end of ``vertices`` and indexing fails (no silent wrong vertex).
        """
        if self.vertex_position is not None:
            ids = self.vertex_position[ids]
        if ids.ndim == 1:
            return self.vertices[:, ids]
        return self.vertices.gather(1, ids[..., None].expand(-1, -1, 3))

    def keypoints(self, name: str) -> Tensor:
        """Keypoints of set ``name``: ``smpl24``, ``openpose25``, a detector format's set
        (``coco17``, ``coco_wholebody``, ``halpe26``, ``h36m17``, ``mediapipe33``), ``markers``
        or ``vertices``.

        Returns:
            ``(B, K, 3)`` with K = 24, 25 (BODY_25 order), the format's count in its order (NaN
            rows for points the body cannot place), M markers or V vertices.
        Raises:
            ValueError: unknown set, or a set this body does not have.
        """
        return self.selector.select(name, self.vertices_at, self.joints, self.vertices)


class BodyModel(nn.Module):
    """An SMPL-format body model (24 joints, 10 shape components), differentiable in all inputs.

    Moves with ``.to(device, dtype)``. Attributes that describe the body:

    - ``faces``: ``(F, 3)`` long buffer; ``parents``: ``(24,)`` long buffer (root -1);
    - ``joint_names`` (24 names), ``num_vertices`` (V), ``source`` (the file it came from);
    - ``vt`` ``(T, 2)`` / ``ft`` ``(F, 3)`` UVs (``uv`` gives both) and DensePose ``dp_I`` ``(V,)``
      (parts 1-24), ``dp_U``, ``dp_V`` ``(V,)``: buffers when the file has them, else ``None``;
    - ``marker_names`` (``None`` without markers), ``keypoint_sets`` (the sets this body offers).
    """

    def __init__(self, data: BodyData, dtype: torch.dtype = torch.float32) -> None:
        """Build the model from validated file contents.

        Args:
            data: the body model's arrays (``fitkit.body.loaders.read_body_file``).
            dtype: floating dtype of the model's buffers.
        """
        super().__init__()
        self.source = data.source
        self.joint_names = data.joint_names
        self.marker_names = data.marker_names
        self.num_vertices = data.num_vertices
        self.smpl = _build_smpl(data, dtype)
        self.skinning = skinning_from_arrays(data.v_template, data.shapedirs, data.posedirs,
                                             data.J_regressor, data.weights, SMPL_PARENTS,
                                             dtype)
        self.register_buffer("faces", torch.as_tensor(data.faces, dtype=torch.long))
        self.register_buffer("parents", torch.tensor(SMPL_PARENTS, dtype=torch.long))
        self.register_buffer("vt", _optional(data.vt, dtype))
        self.register_buffer("ft", _optional(data.ft, torch.long))
        self.register_buffer("dp_I", _optional(data.dp_I, torch.uint8))
        self.register_buffer("dp_U", _optional(data.dp_U, dtype))
        self.register_buffer("dp_V", _optional(data.dp_V, dtype))
        openpose_ids = None
        if data.vertex_ids is not None:
            openpose_ids = [data.vertex_ids[name] for name in OPENPOSE_VERTEX_NAMES]
        self.register_buffer("openpose_vertex_ids", _optional(openpose_ids, torch.long))
        self.register_buffer("openpose_map", torch.tensor(SMPL_TO_OPENPOSE25), persistent=False)
        self.register_buffer("format_rows", torch.tensor(FORMAT_ROWS), persistent=False)
        self.register_buffer("format_vertices", torch.tensor(FORMAT_VERTICES), persistent=False)
        self.register_buffer("marker_ids", _optional(data.marker_ids, torch.long))
        self.register_buffer("sampled_ids", sample_vertex_ids(  # all of a body smaller than that
            torch.as_tensor(data.v_template), min(SAMPLED_VERTICES, data.num_vertices)),
            persistent=False)
        self.keypoint_sets = body_keypoint_sets(openpose_ids is not None,
                                                data.marker_ids is not None)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model."""
        return self.smpl.v_template.dtype

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.smpl.v_template.device

    @property
    def uv(self) -> tuple[Tensor, Tensor] | None:
        """``(vt, ft)``: ``(T, 2)`` UV coordinates, ``(F, 3)`` per-corner indices; or ``None``."""
        return None if self.vt is None else (self.vt, self.ft)

    def keypoint_names(self, name: str) -> tuple[str, ...]:
        """Names of the keypoints of set ``name`` (``smpl24``, ``openpose25``, a detector
        format's set such as ``coco17``, or ``markers``)."""
        if name == "smpl24":
            return self.joint_names
        if name in self.keypoint_sets and keypoint_set_names(name) is not None:
            return keypoint_set_names(name)
        if name == "markers" and self.marker_names is not None:
            return self.marker_names
        raise ValueError(
            f"body model {self.source} has no named keypoint set {name!r} "
            f"(named sets: {', '.join(s for s in self.keypoint_sets if s != 'vertices')})"
        )

    @property
    def selector(self) -> KeypointSelector:
        """The vertex-based keypoints of this body."""
        return KeypointSelector(self.openpose_vertex_ids, self.openpose_map, self.marker_ids,
                                self.source, self.format_rows, self.format_vertices,
                                self.sampled_ids)

    def forward(
        self,
        global_orient: Tensor | None = None,
        body_pose: Tensor | None = None,
        betas: Tensor | None = None,
        transl: Tensor | None = None,
        vertex_ids: Tensor | None = None,
    ) -> BodyOutput:
        """Pose and shape the body (:mod:`fitkit.body.skinning`, equal to ``smplx``'s
        evaluation): every vertex, or with ``vertex_ids`` only those (and the joints).

        Args:
            global_orient: ``(B, 3)`` axis-angle of the root.
            body_pose: ``(B, 69)`` axis-angle of joints 1-23.
            betas: ``(B, 10)`` shape coefficients.
            transl: ``(B, 3)`` translation (meters), added to every vertex and joint.
            vertex_ids: ``(K,)`` long: evaluate only these vertices (an empty tensor: joints
                only); ``None``: all of them. Joints are always exact.
            Missing inputs are zero; B comes from those given (1 when none is). Inputs are cast
            to the model's dtype (differentiably) and must be on its device.
        Returns:
            ``BodyOutput`` with ``vertices`` ``(B, V, 3)`` (``(B, K, 3)`` with ``vertex_ids``)
            and ``joints`` ``(B, 24, 3)``.
        Raises:
            ValueError: an input of the wrong shape, or inputs that disagree on B.
        """
        params = self._params(global_orient, body_pose, betas, transl)
        joints, vertices = self.skinning(**params, vertex_ids=vertex_ids)
        if vertex_ids is None:
            return BodyOutput(vertices, joints, self.selector)
        position = torch.full((self.num_vertices,), len(vertex_ids), dtype=torch.long,
                              device=vertex_ids.device)
        position[vertex_ids] = torch.arange(len(vertex_ids), device=vertex_ids.device)
        return BodyOutput(vertices, joints, self.selector, vertex_ids, position)

    def _params(self, global_orient: Tensor | None, body_pose: Tensor | None,
                betas: Tensor | None, transl: Tensor | None) -> dict[str, Tensor]:
        """The four parameters checked, zero where missing, in the model's dtype."""
        given = {
            "global_orient": global_orient,
            "body_pose": body_pose,
            "betas": betas,
            "transl": transl,
        }
        sizes = {name: value.shape[0] for name, value in given.items() if value is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"body parameters disagree on the batch size: {sizes}")
        batch_size = next(iter(sizes.values()), 1)
        params = {}
        for name, size in PARAM_SIZES.items():
            value = given[name]
            if value is None:
                value = torch.zeros(batch_size, size, dtype=self.dtype, device=self.device)
            elif value.ndim != 2 or value.shape[1] != size:
                raise ValueError(f"{name} must have shape (B, {size}), got {tuple(value.shape)}")
            params[name] = value.to(self.dtype)
        return params

    def extra_repr(self) -> str:
        return f"source={self.source}, num_vertices={self.num_vertices}"


def load_body(
    name_or_path: str | os.PathLike = "open",
    gender: str = "neutral",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BodyModel:
    """Load a body model.

    Args:
        name_or_path: ``"open"`` (the open body that ships with fitkit), an official SMPL
            ``.pkl`` (read without chumpy), an SMPL-format ``.npz``, or a folder of official
            files (``SMPL_NEUTRAL.pkl``, ``basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl``, ...).
        gender: ``"neutral"``, ``"female"`` or ``"male"``; picks the file in a folder (the open
            body is neutral only; a file is its own gender).
        device, dtype: where the model lives.
    Raises:
        FileNotFoundError: no such file or folder, or no file of ``gender`` in the folder.
        fitkit.body.loaders.BodyFileError: unreadable file, or a missing or malformed key.
    """
    path = resolve_body_path(name_or_path, gender)
    return BodyModel(read_body_file(path), dtype=dtype).to(device)


def _optional(values: object, dtype: torch.dtype) -> Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=dtype)


def _build_smpl(data: BodyData, dtype: torch.dtype) -> smplx.SMPL:
    """``smplx.SMPL`` over ``data``, with the model's own vertex ids and no per-batch parameters."""
    # smplx always selects the face and foot vertices as extra joints (fitkit drops them and
    # takes its keypoints from the vertices); a body without those ids gets vertex 0 here.
    vertex_ids = data.vertex_ids or dict.fromkeys(OPENPOSE_VERTEX_NAMES, 0)
    kintree_table = torch.stack([torch.tensor(SMPL_PARENTS), torch.arange(NUM_JOINTS)]).numpy()
    struct = Struct(
        v_template=data.v_template,
        f=data.faces,
        shapedirs=data.shapedirs,
        posedirs=data.posedirs,
        J_regressor=data.J_regressor,
        weights=data.weights,
        kintree_table=kintree_table,
    )
    # smplx prints a warning for shape spaces of fewer than 300 components.
    with contextlib.redirect_stdout(io.StringIO()):
        smpl = smplx.SMPL(
            model_path=None,
            data_struct=struct,
            vertex_ids=vertex_ids,
            num_betas=NUM_BETAS,
            use_hands=False,
            create_global_orient=False,
            create_body_pose=False,
            create_betas=False,
            create_transl=False,
            dtype=dtype,
        )
    # smplx rounds the model's arrays through float32; put the file's values back.
    smpl.v_template = torch.as_tensor(data.v_template, dtype=dtype)
    smpl.shapedirs = torch.as_tensor(data.shapedirs, dtype=dtype)
    posedirs = np.ascontiguousarray(data.posedirs.reshape(-1, NUM_POSE_BASIS).T)
    smpl.posedirs = torch.as_tensor(posedirs, dtype=dtype)
    smpl.J_regressor = torch.as_tensor(data.J_regressor, dtype=dtype)
    smpl.lbs_weights = torch.as_tensor(data.weights, dtype=dtype)
    return smpl
