"""Make ``docs/images/synth_examples.png``: synthetic samples with their annotations.

Generates a small dataset with ``fitkit.synth`` into a temporary folder and reads it back as a
user would (images, OpenPose JSON, DensePose IUV PNG, ``init.npz``). Each sample gets three
panels: the image with its detector-like keypoints, its IUV (R = U, G = V, B = part), and the
shaded mesh of its initial estimate over the image.

    python docs/make_synth_examples.py [--out docs/images/synth_examples.png] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fitkit.body import load_body
from fitkit.geometry import Camera
from fitkit.io import read_openpose_people, read_params
from fitkit.render import grid, shade, to_uint8
from fitkit.synth.config import SynthConfig
from fitkit.synth.dataset import generate_dataset

BODY25_LIMBS = (
    (1, 8), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11),
    (8, 12), (12, 13), (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18),
    (14, 19), (19, 20), (14, 21), (11, 22), (22, 23), (11, 24),
)
RIGHT = {2, 3, 4, 9, 10, 11, 15, 17, 22, 23, 24}
LEFT = {5, 6, 7, 12, 13, 14, 16, 18, 19, 20, 21}


def _colour(a: int, b: int) -> tuple[int, int, int]:
    if {a, b} & RIGHT and not {a, b} & LEFT:
        return (255, 70, 50)
    if {a, b} & LEFT and not {a, b} & RIGHT:
        return (50, 140, 255)
    return (60, 230, 90)


def draw_keypoints(image: Image.Image, keypoints: np.ndarray) -> Image.Image:
    """Skeleton and points of ``(25, 3)`` OpenPose keypoints (confidence 0 = missing)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    for a, b in BODY25_LIMBS:
        if keypoints[a, 2] > 0 and keypoints[b, 2] > 0:
            draw.line([tuple(keypoints[a, :2]), tuple(keypoints[b, :2])], fill=_colour(a, b),
                      width=2)
    for u, v, c in keypoints:
        if c > 0:
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=(255, 255, 255))
    return out


def iuv_picture(path: Path) -> np.ndarray:
    """A DensePose IUV file (channels R, G, B = V, U, I) shown as R = U, G = V, B = I * 10."""
    v, u, part = np.array(Image.open(path)).transpose(2, 0, 1).astype(np.int32)
    return np.stack([u, v, np.minimum(part * 10, 255)], -1).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).parent / "images" / "synth_examples.png"
    parser.add_argument("--out", default=str(default), help="picture to write")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--num", type=int, default=6, help="samples (two per row)")
    args = parser.parse_args()

    size = 256
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate_dataset(Path(tmp) / "synth", args.num, args.seed,
                                  SynthConfig(size=size, keypoint_noise="detector"))
        init = read_params(folder / "init.npz")
        names = init["image_names"]
        images = np.stack([np.array(Image.open(folder / "images" / f"{name}.png"))
                           for name in names])
        body = load_body("open")
        params = {k: torch.from_numpy(init[k])
                  for k in ("global_orient", "body_pose", "betas", "transl")}
        camera = Camera(torch.from_numpy(init["focal_length"]),
                        torch.from_numpy(init["camera_center"]),
                        torch.full((len(names), 2), float(size)))
        with torch.no_grad():
            overlays = to_uint8(shade(body(**params).vertices, body.faces, camera, (size, size),
                                      color=(0.95, 0.45, 0.8),
                                      background=torch.from_numpy(images) / 255.0, alpha=0.6))
        for row, name in enumerate(names):
            keypoints = read_openpose_people(folder / "keypoints" / f"{name}_keypoints.json")[0]
            panels += [np.array(draw_keypoints(Image.fromarray(images[row]), keypoints)),
                       iuv_picture(folder / "densepose" / f"{name}_IUV.png"),
                       overlays[row].numpy()]
    sheet = grid(torch.from_numpy(np.stack(panels)), columns=6, fill=255)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet.numpy()).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
