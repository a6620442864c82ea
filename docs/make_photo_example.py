"""The picture of ``docs/photos.md``: one photo fitted several ways, each seen over the photo,
from the side and from above.

    python docs/make_photo_example.py PHOTO.jpg PHOTO_keypoints.json   # docs/images/photo_fits.png

Rows: *before* (what ``fitkit.fit`` did without an init before the scratch mode: the refine
preset from the rest pose facing the camera), *default* (``fitkit.fit(photo, keypoints=...)``,
from scratch), *+flow* (the default fit refined with the keypoints and the shipped
displacement network's predicted flow), *regressor* (the shipped open HMR/SPIN regressor's
estimate alone, ``fitkit.regress``) and *init=regress* (the default fit from that estimate).
The photo is drawn downscaled and blurred beyond recognition, so that only fitkit's outputs
enter the picture. Prints each fit's energy, flags,
relative 2D error and time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

import fitkit
from fitkit.fitting.multistart import turned_orientations
from fitkit.geometry import Camera
from fitkit.viz import stack_rows, views

WIDTH = 256
"""Width of each panel (pixels)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("keypoints", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/photo_fits.png"))
    parser.add_argument("--blur", type=float, default=12.0, help="blur radius (panel pixels)")
    parser.add_argument("--no-regress", action="store_true",
                        help="leave out the rows of the shipped regressor")
    args = parser.parse_args()
    body = fitkit.load_body("open")
    photo = Image.open(args.photo).convert("RGB")
    width, height = photo.size
    small = photo.resize((WIDTH, round(height * WIDTH / width)))
    backdrop = np.asarray(small.filter(ImageFilter.GaussianBlur(args.blur)))
    scale = WIDTH / width

    fits = {"before": fitkit.fit(args.photo, keypoints=args.keypoints, preset="refine",
                                 init={"global_orient": turned_orientations([0.0]).numpy()})}
    fits["default"] = fitkit.fit(args.photo, keypoints=args.keypoints)
    fits["+flow"] = fitkit.fit(args.photo, keypoints=args.keypoints, init=fits["default"],
                               data_term=["keypoints", "flow"])
    if not args.no_regress:
        regressed = fitkit.regress(args.photo, keypoints=args.keypoints)
        with torch.no_grad():
            output = body(**{key: regressed.params[key].float() for key in
                             ("global_orient", "body_pose", "betas", "transl")})
        fits["regressor"] = fitkit.FitResult(
            params=regressed.params, vertices=output.vertices, joints=output.joints,
            energy=torch.full((1,), float("nan")), terms={}, stages=[], flags={},
            timings=regressed.timings | {"total": sum(regressed.timings.values())},
            measures={"relative_error": torch.full((1,), float("nan"))})
        fits["init=regress"] = fitkit.fit(args.photo, keypoints=args.keypoints, init="regress")
    rows = []
    for label, result in fits.items():
        flags = [name for name, flag in result.flags.items() if flag[0]] or "none"
        error = 100 * float(result.measures["relative_error"][0])
        print(f"{label:8s} energy {float(result.energy[0]):8.1f}  2D error {error:4.1f} % of "
              f"height  flags {flags}  fit {result.timings['total']:.1f} s")
        params = result.params
        camera = Camera(params["focal_length"][:1] * scale,
                        (params["camera_center"][:1] + 0.5) * scale - 0.5,
                        torch.tensor([[backdrop.shape[1], backdrop.shape[0]]],
                                     dtype=torch.float32))
        rows.append(views(backdrop, result.vertices[0], body.faces, camera, label=label))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stack_rows(rows)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
