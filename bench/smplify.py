"""Time batched SMPLify (each data term and open prior) and measure its peak memory.

    python bench/smplify.py [--batch-sizes 1 32 64] [--iterations 100] [--priors gmm vposer cnf]
                            [--terms keypoints densepose flow] [--size 512] [--preset refine]
                            [--threads N] [--lm-iterations 10]

For every device (CPU, and CUDA when available), data term, prior and batch size: one fit of
synthetic people (open body, poses from ``fitkit.synth.poses``, ``--size`` square images, a start
perturbed by 0.2 rad and 10 cm) to exact keypoints plus 2 px noise, the DensePose IUV rendered
from the truth, or the exact displacement field (``flow``), with ``--iterations`` per stage of
the preset (two stages). Prints the milliseconds to build the term (rendering and pixel -> vertex
for flow, the (I, U, V) lookup for DensePose), per fit, per iteration and per sample-iteration,
and the peak memory: CUDA's peak allocation, or on the CPU the process's peak resident set so
far (it only grows).

Every fit runs twice in the same process, alternating: with fitkit's sparse evaluation (the body
evaluated only where the data terms read it, ``SMPLify(evaluation="sparse")``) and with the
reference path (every vertex through ``smplx.SMPL``, ``evaluation="full"``: the path before
sparse evaluation and before fitkit's own skinning of the whole mesh). The table gives both
times, their ratio, and the largest relative difference of the samples' final energies (sparse
evaluation must not change the fit).

A second table sets Levenberg-Marquardt (``optimizer="lm"``, ``--lm-iterations`` per stage,
:mod:`fitkit.fitting.lm`) against the preset's Adam on the same batch, in the same run, for
every data term and prior LM supports (keypoints, DensePose, flow; GMM or no prior): both
times, the share of samples whose LM energy is at most Adam's, the median ratio of the
energies, and where LM's time goes (Jacobians, solves, energy evaluations, the rest: the loop's
bookkeeping, the final mesh and plausibility measures; a second, instrumented LM run).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

import fitkit
import fitkit.fitting.adam
import fitkit.fitting.lm
import fitkit.fitting.smplify
from fitkit.body import BodyModel, BodyOutput
from fitkit.fitting import SMPLify, preset
from fitkit.geometry import Camera
from fitkit.priors import load
from fitkit.render import rasterize
from fitkit.synth.annotate import densepose_iuv
from fitkit.synth.poses import sample_body_pose
from fitkit.terms import exact_displacements


def smplx_body(body: BodyModel) -> BodyModel:
    """``body`` whose forward pass is ``smplx.SMPL``'s over every vertex (the reference path;
    it shares the model's arrays)."""
    reference = copy.copy(body)

    def forward(global_orient: Tensor | None = None, body_pose: Tensor | None = None,
                betas: Tensor | None = None, transl: Tensor | None = None,
                vertex_ids: Tensor | None = None) -> BodyOutput:
        assert vertex_ids is None, "the reference path evaluates every vertex"
        output = body.smpl(**body._params(global_orient, body_pose, betas, transl))
        return BodyOutput(output.vertices, output.joints[:, :24], body.selector)

    reference.forward = forward
    return reference


def make_batch(
    body: fitkit.body.BodyModel, camera: Camera, seed: int
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Ground-truth-derived keypoints ``(B, 25, 3)``, the truth and a perturbed start, on the
    body's device."""
    batch = camera.batch_size
    g = torch.Generator().manual_seed(seed)
    like = {"device": body.device, "dtype": body.dtype}
    truth = {
        "global_orient": torch.tensor([[torch.pi, 0.0, 0.0]]).repeat(batch, 1),
        "body_pose": sample_body_pose(batch, generator=g),
        "betas": 0.5 * torch.randn(batch, 10, generator=g),
        "transl": torch.tensor([[0.0, -0.3, 3.0]]) + 0.2 * torch.randn(batch, 3, generator=g),
    }
    truth = {name: value.to(**like) for name, value in truth.items()}
    with torch.no_grad():
        pixels = camera.project(body(**truth).keypoints("openpose25"))
    pixels = pixels + 2.0 * torch.randn(pixels.shape, generator=g).to(**like)
    keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    noise = {
        "global_orient": 0.1 * torch.randn(batch, 3, generator=g),
        "body_pose": 0.2 * torch.randn(batch, 69, generator=g),
        "betas": torch.zeros(batch, 10),
        "transl": 0.1 * torch.randn(batch, 3, generator=g),
    }
    init = {name: truth[name] + noise[name].to(**like) for name in truth}
    return keypoints, truth, init


def term_inputs(
    name: str,
    body: fitkit.body.BodyModel,
    camera: Camera,
    keypoints: Tensor,
    truth: dict[str, Tensor],
    init: dict[str, Tensor],
) -> dict:
    """The inputs of data term ``name`` for one batch (the IUV and the exact displacement field
    are rendered here, outside the timed term construction)."""
    if name == "keypoints":
        return {"keypoints": keypoints}
    if name == "densepose":
        with torch.no_grad():
            fragments = rasterize(body(**truth).vertices, body.faces, camera)
        iuv = densepose_iuv(fragments.face_id, fragments.bary, body.faces,
                            body.dp_I, body.dp_U, body.dp_V)
        return {"iuv": iuv, "body": body}
    if name == "flow":
        with torch.no_grad():
            init_vertices = body(**init).vertices
        return {"displacements": exact_displacements(body, truth, init, camera),
                "init_vertices": init_vertices, "camera": camera, "body": body}
    raise ValueError(f"no benchmark inputs for data term {name!r}")


def peak_memory_mb(device: torch.device) -> float:
    """CUDA peak allocation since the last reset, or the process's peak RSS (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--iterations", type=int, default=100, help="per stage")
    parser.add_argument("--priors", nargs="+", default=["gmm", "vposer", "cnf"])
    parser.add_argument("--terms", nargs="+", default=["keypoints", "densepose", "flow"])
    parser.add_argument("--size", type=int, default=512, help="image width and height")
    parser.add_argument("--preset", default="refine")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lm-iterations", type=int, default=10,
                        help="LM iterations per stage (0: no LM table)")
    parser.add_argument("--parts", action="store_true",
                        help="also time the parts of one iteration alone (third table)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    config = preset(args.preset).with_stages(iterations=args.iterations)
    iterations = sum(stage.iterations for stage in config.stages)
    print(f"preset {args.preset}, {len(config.stages)} stages x {args.iterations} iterations, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    header = ("device", "term", "prior", "B", "build ms", "ms/fit", "ms/iter", "ms/(iter*B)",
              "full ms/fit", "speed-up", "max rel. energy diff", "peak MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    lm_rows, parts_rows = [], []
    for device in devices:
        body = fitkit.load_body("open", device=device)
        for term_name, prior_name in itertools.product(args.terms, args.priors):
            prior = load(prior_name)
            fitters = {"sparse": SMPLify(body, prior, config),
                       "full": SMPLify(smplx_body(body), prior, config, evaluation="full")}
            for batch in args.batch_sizes:
                camera = config.camera(args.size, args.size, batch, device=device)
                keypoints, truth, init = make_batch(body, camera, seed=batch)
                inputs = term_inputs(term_name, body, camera, keypoints, truth, init)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                term = config.build_term(term_name, **inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                build_ms = 1000.0 * (time.perf_counter() - start)
                results = {mode: fitter.fit(term, camera, init=init)
                           for mode, fitter in fitters.items()}
                ms = 1000.0 * results["sparse"].timings["total"]
                reference = 1000.0 * results["full"].timings["total"]
                energy = results["full"].energy
                change = float(((results["sparse"].energy - energy).abs()
                                / energy.abs().clamp(min=1e-9)).max())
                row = (device.type, term_name, prior_name, str(batch), f"{build_ms:.0f}",
                       f"{ms:.0f}", f"{ms / iterations:.1f}", f"{ms / iterations / batch:.2f}",
                       f"{reference:.0f}", f"{reference / ms:.1f}x", f"{change:.1e}",
                       f"{peak_memory_mb(device):.0f}")
                print("| " + " | ".join(row) + " |", flush=True)
                if args.parts:
                    parts_rows.append((device.type, term_name, prior_name, batch,
                                       ms / iterations, iteration_parts(
                                           body, prior, term, camera, init, fitters["sparse"])))
                if args.lm_iterations and prior_name == "gmm" and term_name != "keypoints3d":
                    lm_rows.append((device.type, term_name, prior_name, batch, results["sparse"],
                                    lm_row(body, prior, config, args.lm_iterations, term,
                                           camera, init)))
    if lm_rows:
        print(f"\nLevenberg-Marquardt, {args.lm_iterations} iterations per stage, against the "
              f"preset's Adam ({args.iterations} per stage) above")
        header = ("device", "term", "prior", "B", "Adam ms/fit", "LM ms/fit", "LM <= Adam",
                  "median E_LM / E_Adam", "LM Jacobian ms", "LM solve ms", "LM energy ms",
                  "LM rest ms")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for device_type, term_name, prior_name, batch, adam, (lm, profile) in lm_rows:
            share = float((lm.energy <= adam.energy).float().mean())
            ratio = float((lm.energy / adam.energy).median())
            row = (device_type, term_name, prior_name, str(batch),
                   f"{1000 * adam.timings['total']:.0f}", f"{1000 * lm.timings['total']:.0f}",
                   f"{100 * share:.1f} %", f"{ratio:.3f}",
                   *(f"{1000 * profile[part]:.0f}" for part in ("jacobian", "solve", "energy")),
                   f"{1000 * (2 * profile['total'] - sum(profile.values())):.0f}")
            print("| " + " | ".join(row) + " |", flush=True)
    if parts_rows:
        names = tuple(parts_rows[0][-1])
        print("\nWhere an Adam iteration goes: each part's forward + backward timed alone "
              "(median ms), against the fit's ms per iteration above")
        header = ("device", "term", "prior", "B", "ms/iter", *names)
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for device_type, term_name, prior_name, batch, per_iteration, parts in parts_rows:
            row = (device_type, term_name, prior_name, str(batch), f"{per_iteration:.1f}",
                   *(f"{parts[name]:.1f}" for name in names))
            print("| " + " | ".join(row) + " |", flush=True)


def iteration_parts(body: fitkit.body.BodyModel, prior: torch.nn.Module,
                    term: fitkit.terms.DataTerm, camera: Camera, init: dict[str, Tensor],
                    fitter: SMPLify, repeats: int = 15) -> dict[str, float]:
    """Median milliseconds of each part of a body-stage iteration run alone, forward and
    backward: the body as the loop evaluates it (sparse where the term allows), the body over
    every vertex (fitkit, and smplx: the reference path), the data term on a fixed body output,
    the pose prior, and one Adam step of the four parameters."""
    params = {name: value.detach().clone().requires_grad_(True) for name, value in init.items()}
    evaluate = fitter._evaluator({"term": term})
    reference = smplx_body(body)
    with torch.no_grad():
        output = evaluate(**params)

    def body_part(model) -> Callable[[], None]:
        def run() -> None:
            out = model(**params)
            (out.vertices.square().sum() + out.joints.square().sum()).backward()
        return run

    def term_part() -> None:
        vertices = output.vertices.detach().requires_grad_(True)
        joints = output.joints.detach().requires_grad_(True)
        term.energy(dataclasses.replace(output, vertices=vertices, joints=joints),
                    camera).sum().backward()

    def prior_part() -> None:
        prior.energy(params["body_pose"]).sum().backward()

    optimizer = fitkit.fitting.adam.Adam(list(params.values()), lr=0.01)
    for value in params.values():
        value.grad = torch.ones_like(value)

    parts = {"body (loop)": body_part(evaluate), "body, every vertex": body_part(body),
             "body, every vertex (smplx)": body_part(reference), "data term": term_part,
             "prior": prior_part, "Adam step": lambda: optimizer.step(lambda: None)}
    times = {}
    for name, run in parts.items():
        samples = []
        for repeat in range(repeats + 2):
            if body.device.type == "cuda":
                torch.cuda.synchronize(body.device)
            start = time.perf_counter()
            run()
            if body.device.type == "cuda":
                torch.cuda.synchronize(body.device)
            if repeat >= 2:  # warm-up
                samples.append(1000.0 * (time.perf_counter() - start))
        times[name] = statistics.median(samples)
    return times


def lm_row(body: fitkit.body.BodyModel, prior: torch.nn.Module, config: fitkit.fitting.FitConfig,
           iterations: int, term: fitkit.terms.DataTerm, camera: Camera,
           init: dict[str, Tensor]) -> tuple[fitkit.fitting.FitResult, dict[str, float]]:
    """An LM fit of the same batch (timed), and the seconds it spends in Jacobians, solves,
    energy evaluations (body and residuals) and in all (a second, instrumented run)."""
    fitter = SMPLify(body, prior, config.with_stages(optimizer="lm", iterations=iterations))
    result = fitter.fit(term, camera, init=init)
    profile = {"jacobian": 0.0, "solve": 0.0, "energy": 0.0}
    patched = {(fitkit.fitting.smplify, "structured_jacobian"): "jacobian",
               (fitkit.fitting.lm, "jacobian"): "jacobian",
               (fitkit.fitting.lm, "damped_step"): "solve",
               (fitkit.fitting.smplify, "stage_residuals"): "energy"}
    originals = {key: getattr(*key) for key in patched}

    def timed(function, part):
        def run(*args, **kwargs):
            if body.device.type == "cuda":
                torch.cuda.synchronize(body.device)
            start = time.perf_counter()
            value = function(*args, **kwargs)
            if body.device.type == "cuda":
                torch.cuda.synchronize(body.device)
            profile[part] += time.perf_counter() - start
            return value
        return run

    evaluator = fitter._evaluator  # the body evaluation of an energy: part of "energy"
    fitter._evaluator = lambda *args, **kwargs: timed(evaluator(*args, **kwargs), "energy")
    try:
        for (module, name), part in patched.items():
            setattr(module, name, timed(originals[(module, name)], part))
        start = time.perf_counter()
        fitter.fit(term, camera, init=init)
        profile["total"] = time.perf_counter() - start
    finally:
        for (module, name), function in originals.items():
            setattr(module, name, function)
    return result, profile


if __name__ == "__main__":
    main()
