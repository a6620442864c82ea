"""fitkit.synth: a synthetic world of people with ground truth.

Poses from activity templates (:mod:`fitkit.synth.poses`), random shapes, procedural clothing
textures, cameras and placements, non-plain backgrounds, shaded renders, OpenPose keypoints
(exact or detector-like), DensePose IUV images and initial estimates perturbed like a
regressor's. ``python -m fitkit.synth --out DIR --num N`` writes a dataset folder
(:func:`generate_dataset`); ``--views V`` a multi-view folder
(:func:`generate_multiview_dataset`), ``--frames F`` a folder of sequences
(:func:`generate_sequence_dataset`); :class:`SynthWorld` renders samples in memory.
"""

from fitkit.synth.annotate import KeypointNoise
from fitkit.synth.config import Lighting, SynthConfig, update_config
from fitkit.synth.dataset import SynthError, generate_dataset
from fitkit.synth.init import InitNoise
from fitkit.synth.multiview import ViewsConfig, generate_multiview_dataset, generate_views
from fitkit.synth.scene import SceneConfig
from fitkit.synth.sequences import MotionConfig, generate_sequence, generate_sequence_dataset
from fitkit.synth.world import SampleBatch, SynthWorld, sample_generator

__all__ = [
    "InitNoise",
    "KeypointNoise",
    "Lighting",
    "MotionConfig",
    "SampleBatch",
    "SceneConfig",
    "SynthConfig",
    "SynthError",
    "SynthWorld",
    "ViewsConfig",
    "generate_dataset",
    "generate_multiview_dataset",
    "generate_sequence",
    "generate_sequence_dataset",
    "generate_views",
    "sample_generator",
    "update_config",
]
