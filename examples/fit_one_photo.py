"""Fit the body to one photo and its OpenPose keypoints, and draw the fit over the photo.

    python examples/fit_one_photo.py PHOTO.jpg PHOTO_keypoints.json --out fit.png
    python examples/fit_one_photo.py                 # no photo: a synthetic one, made here

Without an initial estimate the fit starts twice from an upright body placed by the keypoints,
once facing the camera and once turned away from it, and keeps the lower energy (SMPLify's
start); pass ``--init params.npz`` (docs/formats.md) to start from a regressor's output. The
camera is fitkit's default for the image size (focal length sqrt(w^2 + h^2)) unless the init
file holds one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fitkit
from fitkit.api import make_camera, read_images
from fitkit.fitting import preset
from fitkit.io import write_openpose
from fitkit.synth import SynthConfig, SynthWorld
from fitkit.viz import compare


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
    parser.add_argument("keypoints", nargs="?", type=Path, help="its OpenPose JSON file")
    parser.add_argument("--init", type=Path, help="initial parameters (.npz), optional")
    parser.add_argument("--prior", default="gmm", help="gmm, vposer or cnf")
    parser.add_argument("--out", type=Path, default=Path("fit.png"), help="overlay picture")
    args = parser.parse_args()
    if args.photo is None:
        args.photo, args.keypoints = synthetic_photo(Path(tempfile.mkdtemp()))
    elif args.keypoints is None:
        parser.error("give the photo's OpenPose JSON file too")

    if args.init is not None:
        result = fitkit.fit(args.photo, init=args.init, keypoints=args.keypoints, prior=args.prior)
    else:  # SMPLify's two starts: facing the camera and turned away from it; keep the better
        fits = [fitkit.fit(args.photo, init={"global_orient": orient}, keypoints=args.keypoints,
                           prior=args.prior)
                for orient in ([[np.pi, 0.0, 0.0]], [[0.0, 0.0, np.pi]])]
        result = min(fits, key=lambda fit: float(fit.energy[0]))
    terms = ", ".join(f"{name} {value[0]:.1f}" for name, value in result.terms.items())
    print(f"energy {result.energy[0]:.1f} ({terms})")
    print(f"flags  {[name for name, flag in result.flags.items() if flag[0]] or 'none'}")
    print(f"transl {np.round(result.params['transl'][0].numpy(), 2)} m, "
          f"fit in {result.timings['total']:.1f} s")

    image = read_images(args.photo)[0]
    scale = min(1.0, 512 / max(image.shape[:2]))  # draw big photos at 512 px
    camera = make_camera(np.array([[image.shape[1], image.shape[0]]]), preset("refine"),
                         {k: v.numpy() for k, v in result.params.items()})
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = np.asarray(Image.fromarray(image).resize(size))
        camera = fitkit.geometry.Camera(camera.focal_length * scale,
                                        (camera.principal_point + 0.5) * scale - 0.5,
                                        torch.tensor([[float(size[0]), float(size[1])]]))
    faces = fitkit.load_body("open").faces
    picture = compare(image, {"refined": result.vertices[0]}, faces, camera)
    Image.fromarray(picture).save(args.out)
    print(f"wrote  {args.out}")


if __name__ == "__main__":
    main()
