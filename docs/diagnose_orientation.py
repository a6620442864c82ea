"""Can ReFit's backbone tell which way a synthetic person faces? (`docs/refit.md`, "Longer runs")

    OMP_NUM_THREADS=1 python docs/diagnose_orientation.py --crop 64 --world 96 --steps 1500

Trains ReFit's CPU backbone (``fitkit.nets.refit.ConvBackbone``, the ``cpu`` size) with a
linear head to classify the body's facing direction relative to the camera into 8 bins of 45°
(cross-entropy), on the crops ReFit trains on (``fitkit.train.refit.ReFitBatchMaker``: world seed
1, ``--crop``-pixel crops of ``--world``-pixel images, 16 per step, each render used for 4 steps
with new crop jitter), and prints every 500 steps the accuracy on 256 held-out crops (world seed
0, the validation samples) and the share whose bin is right or opposite (front/back confused).
Chance: 12.5 % and 25 %.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fitkit.body import load_body
from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.nets.refit import IMAGE_MEAN, IMAGE_STD, REFIT_CONFIGS, ConvBackbone
from fitkit.train.flow import VALIDATION_START
from fitkit.train.refit import ReFitAugment, ReFitBatch, ReFitBatchMaker

BINS = 8
BATCH = 16
REUSE = 4


def facing_bins(batch: ReFitBatch) -> Tensor:
    """``(B,)`` the bin of each body's facing direction (its +z axis) about the camera's
    vertical."""
    facing = axis_angle_to_matrix(batch.gt["global_orient"])[:, :, 2]
    yaw = torch.atan2(facing[:, 0], -facing[:, 2])  # 0: facing the camera
    return ((yaw + math.pi) / (2 * math.pi) * BINS).long().clamp(0, BINS - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=64, help="crop side (pixels)")
    parser.add_argument("--world", type=int, default=96, help="synthetic image side (pixels)")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.manual_seed(0)
    maker = ReFitBatchMaker(load_body("open"), args.crop, ReFitAugment(world_size=args.world))
    config = REFIT_CONFIGS["cpu"]
    backbone, head = ConvBackbone(config), nn.Linear(config.global_dim, BINS)
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    mean = torch.tensor(IMAGE_MEAN)[:, None, None]
    std = torch.tensor(IMAGE_STD)[:, None, None]

    def logits(batch: ReFitBatch) -> Tensor:
        return head(backbone((batch.images - mean) / std)[1])

    held_out = [maker.make(0, list(range(VALIDATION_START + i, VALIDATION_START + i + 64)))
                for i in range(0, 256, 64)]
    for step in range(1, args.steps + 1):
        first = (step - 1) // REUSE * BATCH
        batch = maker.make(1, list(range(first, first + BATCH)), step % REUSE)
        loss = F.cross_entropy(logits(batch), facing_bins(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0 or step == args.steps:
            backbone.eval()
            with torch.no_grad():
                hits = opposite = 0
                for sample in held_out:
                    guess, truth = logits(sample).argmax(-1), facing_bins(sample)
                    hits += int((guess == truth).sum())
                    opposite += int(((guess - truth) % (BINS // 2) == 0).sum())
            backbone.train()
            print(f"step {step}: loss {float(loss.detach()):.3f}, held-out accuracy "
                  f"{hits / 256:.3f} (chance {1 / BINS:.3f}), right or opposite "
                  f"{opposite / 256:.3f} (chance {2 / BINS:.3f})", flush=True)


if __name__ == "__main__":
    main()
