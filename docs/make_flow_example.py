"""The picture ``docs/images/flow_example.png``: displacement fields on held-out synthetic images.

    python docs/make_flow_results.py                      # first: the runs it reads
    python docs/make_flow_example.py --work /tmp/fk_results --num 4

Each row is one image of the held-out set, in the network's crop: the image, the initial mesh over
it, the exact displacement field (where the initial render's surface points lie in the image),
the fields predicted by the shipped networks (``open`` given the subject's texture, and
``open-notexture``), and the mesh refined with the ``open`` network's targets (GMM). Fields are
colour-coded by :func:`fitkit.render.flow_colors` (hue = direction, saturation = length; full
saturation at the row's largest exact displacement).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fitkit.api import Fitter, make_camera, read_images
from fitkit.body.model import PARAM_SIZES
from fitkit.geometry import crop_images
from fitkit.io import read_params
from fitkit.refine import read_textures
from fitkit.render import flow_colors, to_uint8
from fitkit.terms import exact_displacements
from fitkit.viz import COLORS, overlay, stack_rows

RUN = "runs/flow-predicted-open-textures-gmm"
"""The refinement run (of ``docs/make_flow_results.py``) whose fits are drawn."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fk_results"))
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/images/flow_example.png"))
    args = parser.parse_args()
    data = args.work / "detector"
    init, gt = read_params(data / "init.npz"), read_params(data / "gt.npz")
    refined = read_params(args.work / RUN / "results.npz")
    rows = slice(0, args.num)
    names = [str(name) for name in init["image_names"][rows]]
    fitter = Fitter("flow", None, device="cpu")
    like = {"device": fitter.device, "dtype": fitter.body.dtype}
    images = read_images([data / "images" / f"{name}.png" for name in names])
    sizes = np.array([[image.shape[1], image.shape[0]] for image in images])
    camera = make_camera(sizes, fitter.config, {k: v[rows] for k, v in init.items()}).to(**like)
    pick = {key: torch.as_tensor(init[key][rows]).to(**like) for key in PARAM_SIZES}
    textures = read_textures(data / "textures", names, [""] * len(names)).to(**like)
    pixels = torch.as_tensor(np.stack(images)).to(**like).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        output = fitter.body(**pick)
        fitted = fitter.body(**{key: torch.as_tensor(refined[key][rows]).to(**like)
                                for key in PARAM_SIZES}).vertices
        textured = fitter.predictor(textures)(pixels, output, camera, textures)
        plain = fitter.predictor(None)(pixels, output, camera, None)
        crop = textured.camera
        truth = exact_displacements(fitter.body, {key: torch.as_tensor(gt[key][rows]).to(**like)
                                                  for key in PARAM_SIZES}, pick, crop)
        size = crop.image_size[0, 0].int().item()
        crops = crop_images(pixels, textured.box_center, textured.box_size, size)
        crops = to_uint8(crops.permute(0, 2, 3, 1)).numpy()
    titles = ["image", "initial", "exact field", "predicted, texture", "predicted, no texture",
              "refined"]
    picture_rows = []
    for index in range(len(names)):
        mask = textured.mask[index:index + 1]
        scale = float(torch.linalg.vector_norm(truth[index], dim=0)[mask[0]].max())
        fields = [to_uint8(flow_colors(field[index:index + 1], mask, scale))[0].numpy()
                  for field in (truth, textured.displacements, plain.displacements)]
        camera_i = crop[index]
        panels = [crops[index],
                  overlay(crops[index], output.vertices[index:index + 1], fitter.body.faces,
                          camera_i, color=COLORS["init"])[0],
                  *fields,
                  overlay(crops[index], fitted[index:index + 1], fitter.body.faces, camera_i,
                          color=COLORS["refined"])[0]]
        gap = np.full((size, 4, 3), 255, dtype=np.uint8)
        picture_rows.append(np.concatenate([p for panel in panels for p in (panel, gap)][:-1],
                                           axis=1))
    picture = Image.fromarray(stack_rows(picture_rows))
    draw = ImageDraw.Draw(picture)
    for index, title in enumerate(titles):
        left = index * (size + 4)
        box = draw.textbbox((left + 2, 1), title)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        draw.text((left + 2, 1), title, fill=(255, 255, 255))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"wrote {args.out} ({picture.width} x {picture.height})")


if __name__ == "__main__":
    main()
