"""Fit the body to one photo and its detector's keypoints; save the parameters, the mesh and a
picture with side and top views.

    python examples/fit_one_photo.py PHOTO.jpg PHOTO_keypoints.json --out fit
    python examples/fit_one_photo.py PHOTO.jpg vitpose.json --keypoint-format coco17 --out fit
    python examples/fit_one_photo.py                 # no photo: a synthetic one, made here

Without ``--init`` the fit starts from scratch (the ``scratch`` preset: four global
orientations fitted at once, the best kept, the pose prior annealed); ``--init`` takes a parameter
file (docs/formats.md) or another tool's output (HMR 2.0, CameraHMR, NLF) to refine instead. The
camera is fitkit's default for the image size (focal length sqrt(w^2 + h^2)) unless the init
holds one. Writes ``OUT.npz`` (parameters, energies, flags), ``OUT.obj`` (the mesh, camera
frame) and ``OUT.png`` (the fit over the photo, from the side and from above: the views that show
depth errors). Prints the median 2D error of the keypoints as a share of the person's height and
any plausibility flag (docs/plausibility.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fitkit
from fitkit.api import read_images
from fitkit.geometry import Camera
from fitkit.io import write_openpose
from fitkit.synth import SynthConfig, SynthWorld
from fitkit.viz import views

DRAW_SIZE = 512
"""Pictures are drawn with the photo's longer side at this many pixels (at most)."""


def synthetic_photo(folder: Path) -> tuple[Path, Path]:
    """A 256 x 256 synthetic photo and its (detector-like) OpenPose file, written to ``folder``."""
    world = SynthWorld(fitkit.load_body("open"), SynthConfig(size=256))
    sample = world.generate(seed=0, indices=[3])
    photo, keypoints = folder / "photo.png", folder / "photo_keypoints.json"
    Image.fromarray(sample.images[0].numpy()).save(photo)
    write_openpose(keypoints, sample.keypoints[0].numpy())
    return photo, keypoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", nargs="?", type=Path, help="the photo (default: a synthetic one)")
    parser.add_argument("keypoints", nargs="?", type=Path,
                        help="its keypoints (OpenPose JSON, mmpose/ViTPose/RTMPose JSON)")
    parser.add_argument("--keypoint-format", help="body25 (OpenPose), coco17, coco_wholebody, "
                        "halpe26, h36m17, mediapipe33 (default: from the file)")
    parser.add_argument("--init", type=Path, help="initial parameters (.npz), optional")
    parser.add_argument("--prior", default="gmm", help="gmm, vposer or cnf")
    parser.add_argument("--out", type=Path, default=Path("fit"),
                        help="output stem: OUT.npz, OUT.obj, OUT.png")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.photo is None:
        args.photo, args.keypoints = synthetic_photo(Path(tempfile.mkdtemp()))
    elif args.keypoints is None:
        parser.error("give the photo's keypoint file too")

    result = fitkit.fit(args.photo, init=args.init, keypoints=args.keypoints, prior=args.prior,
                        keypoint_format=args.keypoint_format)
    terms = ", ".join(f"{name} {value[0]:.1f}" for name, value in result.terms.items())
    print(f"energy {result.energy[0]:.1f} ({terms})")
    print(f"flags  {[name for name, flag in result.flags.items() if flag[0]] or 'none'}")
    share = float(result.measures["relative_error"][0])
    print(f"2D     median error of the keypoints: {100 * share:.1f} % of the person's height")
    print(f"transl {np.round(result.params['transl'][0].numpy(), 2)} m, "
          f"fit in {result.timings['total']:.1f} s")

    image = read_images(args.photo)[0]
    height, width = image.shape[:2]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.save(args.out.with_suffix(".npz"), names=[args.photo.stem])
    result.export_mesh(args.out.with_suffix(".obj"))
    scale = min(1.0, DRAW_SIZE / max(height, width))
    params = result.params
    camera = Camera(params["focal_length"][:1] * scale,
                    (params["camera_center"][:1] + 0.5) * scale - 0.5,
                    torch.tensor([[round(width * scale), round(height * scale)]],
                                 dtype=torch.float32))
    if scale < 1.0:
        image = np.asarray(Image.fromarray(image).resize((round(width * scale),
                                                          round(height * scale))))
    faces = fitkit.load_body("open").faces
    Image.fromarray(views(image, result.vertices[0], faces, camera)).save(
        args.out.with_suffix(".png"))
    print(f"wrote  {args.out.with_suffix('.npz')}, {args.out.with_suffix('.obj')}, "
          f"{args.out.with_suffix('.png')} in {time.perf_counter() - start:.1f} s in all")


if __name__ == "__main__":
    main()
