"""Settings of the synthetic world: one dataclass of defaults per concern, nested in
:class:`SynthConfig`, overridable from a JSON document (``--config``) or ``KEY=VALUE`` pairs
(``--set scene.distance=[2,6]``)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fitkit.synth.annotate import KEYPOINT_MODES, KeypointNoise
from fitkit.synth.init import InitNoise
from fitkit.synth.scene import SceneConfig

MIN_SIZE = 64
"""Smallest image and texture side in pixels."""


@dataclass
class Lighting:
    """Shading of the body: Lambertian from a directional light plus ambient, a colour tint,
    a global exposure and sensor noise.

    Attributes:
        ambient, diffuse: ranges of the ambient and directional intensities.
        tint: largest per-channel deviation of the light colour from white.
        exposure: range of the global brightness factor (body and background).
        noise: largest sigma of the per-pixel Gaussian sensor noise.
    """

    ambient: tuple[float, float] = (0.3, 0.6)
    diffuse: tuple[float, float] = (0.4, 0.9)
    tint: float = 0.1
    exposure: tuple[float, float] = (0.8, 1.15)
    noise: float = 0.02


@dataclass
class SynthConfig:
    """Everything that decides the contents of a synthetic dataset besides seed and indices."""

    size: int = 256
    keypoint_noise: str = "detector"
    texture_size: int = 256
    scene: SceneConfig = field(default_factory=SceneConfig)
    lighting: Lighting = field(default_factory=Lighting)
    keypoints: KeypointNoise = field(default_factory=KeypointNoise)
    init: InitNoise = field(default_factory=InitNoise)

    def __post_init__(self) -> None:
        if self.size < MIN_SIZE:
            raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {self.size}")
        if self.texture_size < MIN_SIZE:
            raise ValueError(f"texture_size must be at least {MIN_SIZE} texels, "
                             f"got {self.texture_size}")
        if self.keypoint_noise not in KEYPOINT_MODES:
            raise ValueError(f"keypoint_noise must be one of {', '.join(KEYPOINT_MODES)}, "
                             f"got {self.keypoint_noise!r}")


def update_config(config: Any, overrides: Mapping[str, Any], where: str = "") -> Any:
    """A copy of a settings dataclass with some fields replaced, recursively.

    Args:
        config: a dataclass instance (e.g. :class:`SynthConfig`).
        overrides: field name -> new value, or a mapping for a nested dataclass. Lists become
            tuples where the default is a tuple.
        where: the dotted name of ``config`` in error messages (empty at the top).
    Raises:
        ValueError: an unknown field or a value of the wrong kind (or not finite), naming the
            field.
    """
    known = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in overrides.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(known))}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ValueError(f"setting {name!r} takes a mapping of its fields, got {value!r}")
            changes[key] = update_config(current, value, name)
        elif isinstance(current, tuple):
            numbers = isinstance(value, list | tuple) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in value)
            if not numbers or len(value) != len(current):
                raise ValueError(f"setting {name!r} takes {len(current)} finite numbers, "
                                 f"got {value!r}")
            changes[key] = tuple(float(v) for v in value)
        elif isinstance(current, bool | str) or not isinstance(value, int | float):
            if type(value) is not type(current):
                raise ValueError(f"setting {name!r} takes a {type(current).__name__}, "
                                 f"got {value!r}")
            changes[key] = value
        elif not math.isfinite(value):
            raise ValueError(f"setting {name!r} takes a finite number, got {value!r}")
        elif isinstance(current, int) and not float(value).is_integer():
            raise ValueError(f"setting {name!r} takes an integer, got {value!r}")
        else:
            changes[key] = type(current)(value)
    return dataclasses.replace(config, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """``"section.key=VALUE"`` -> ``{"section": {"key": VALUE}}``; VALUE is read as JSON when it
    parses, else kept as a string."""
    path, sep, raw = text.partition("=")
    if not sep or not path:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    for part in reversed(path.split(".")):
        value = {part: value}
    return value
