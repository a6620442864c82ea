"""fitkit.synth: a synthetic world of people with ground truth.

Poses from activity templates (:mod:`fitkit.synth.poses`), random shapes, procedural clothing
textures, cameras and placements, non-plain backgrounds, shaded renders, OpenPose keypoints
(exact or detector-like), DensePose IUV images and initial estimates perturbed like a
regressor's. ``python -m fitkit.synth --out DIR --num N`` writes a dataset folder
(:func:`generate_dataset`); :class:`SynthWorld` renders samples in memory.
"""

from fitkit.synth.annotate import KeypointNoise
from fitkit.synth.config import Lighting, SynthConfig, update_config
from fitkit.synth.dataset import SynthError, generate_dataset
from fitkit.synth.init import InitNoise
from fitkit.synth.scene import SceneConfig
from fitkit.synth.world import SampleBatch, SynthWorld, sample_generator

__all__ = [
    "InitNoise",
    "KeypointNoise",
    "Lighting",
    "SampleBatch",
    "SceneConfig",
    "SynthConfig",
    "SynthError",
    "SynthWorld",
    "generate_dataset",
    "sample_generator",
    "update_config",
]
