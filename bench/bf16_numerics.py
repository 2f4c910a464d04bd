#!/usr/bin/env python3
"""Benchmark of numerics, not of speed: how far bfloat16 blocks (compute_dtype BF16, the CPU fast
path's bfloat16 mode) move ConvNeXt's outputs from float32, on the real photos Debian ships
(python3-skimage's data, python3-sklearn's images), for random-weight ConvNeXt-T/S/B.

For each variant: torchvision's architecture with its own initialisation, except every layer
scale set to --layer_scale (default 1: every block at full strength; the initial 1e-6 would make
the blocks nearly vanish and hide their error), saved as a checkpoint; the photos get the
ImageNet eval transform (resize 256 bicubic, center crop 224) in one batch; convnext-run computes
the logits and the pooled embedding in float32 and with --bf16. Prints, per variant: top-1
agreement, the lowest and mean cosine of logits and of embeddings, and the largest difference of
the logits relative to their scale, with the CPU's oneDNN ISA. Asserts nothing.

    /usr/bin/python3 bench/bf16_numerics.py [--bin build/bin] [--variants convnext_tiny,...]

Needs a CPU with native bfloat16 (AVX512-BF16 or AMX-BF16); elsewhere convnext-run refuses
--bf16 and this says so.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def photos():
    """(name, PIL RGB image) for every photo the Debian packages ship that loads offline."""
    out = []
    import skimage.data
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon",
                 "hubble_deep_field", "immunohistochemistry", "motorcycle_left", "horse", "page",
                 "text", "logo", "retina", "cat", "colorwheel", "eagle", "brick", "grass",
                 "gravel", "clock", "carpet"):
        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception:  # Not in this version, or needs a download.
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(1e-9, float(a.max() - a.min()))).astype(np.uint8)
        image = Image.fromarray(a)
        out.append((name, image.convert("RGB")))
    from sklearn.datasets import load_sample_images
    for name, a in zip(("china", "flower"), load_sample_images().images):
        out.append((name, Image.fromarray(a).convert("RGB")))
    return out


def batch(images):
    t = torchvision.transforms
    transform = t.Compose([t.Resize(256, interpolation=t.InterpolationMode.BICUBIC),
                           t.CenterCrop(224), t.ToTensor(),
                           t.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return torch.stack([transform(im) for _, im in images]).numpy().astype(np.float32)


def cosines(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def isa(binary_dir):
    r = subprocess.run([os.path.join(binary_dir, "model_throughput"), "--reference=false",
                        "--aten=false", "--bf16=false", "--seconds=0", "--batches=1",
                        "--variant=convnext_tiny"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("CPU:"):
            return line
    return "CPU: unknown"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    parser.add_argument("--variants", default="convnext_tiny,convnext_small,convnext_base")
    parser.add_argument("--layer_scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = os.path.join(args.bin, "convnext-run")
    images = photos()
    x = batch(images)
    print(isa(args.bin))
    print(f"{len(images)} photos: {', '.join(n for n, _ in images)}; layer scale "
          f"{args.layer_scale}; random weights (seed {args.seed})")
    print(f"{'variant':16} {'top-1 agree':>11} {'logits cos min':>14} {'mean':>9} "
          f"{'emb cos min':>11} {'mean':>9} {'max |dlogit|/max|logit|':>24}")
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "photos.npy")
        np.save(inputs, x)
        for variant in args.variants.split(","):
            torch.manual_seed(args.seed)
            model = getattr(torchvision.models, variant)()
            state = model.state_dict()
            for k in state:
                if k.endswith("layer_scale"):
                    state[k] = torch.full_like(state[k], args.layer_scale)
            ckpt = os.path.join(tmp, f"{variant}.pth")
            torch.save(state, ckpt)
            outs = {}
            for mode in ("fp32", "bf16"):
                flags = ["--bf16"] if mode == "bf16" else []
                logits = os.path.join(tmp, f"{variant}.{mode}.npy")
                for extra, path in (([], logits), (["--features"], logits)):
                    r = subprocess.run([run, "--checkpoint", ckpt, "--input", inputs, "--output",
                                        path, *extra, *flags], capture_output=True, text=True)
                    if r.returncode != 0:
                        print(f"{variant} {mode}: convnext-run failed: {r.stderr.strip()}")
                        return 1
                outs[mode] = (np.load(logits), np.load(logits[:-4] + ".embedding.npy"))
            (l32, e32), (l16, e16) = outs["fp32"], outs["bf16"]
            agree = int(np.sum(l32.argmax(1) == l16.argmax(1)))
            cl, ce = cosines(l32, l16), cosines(e32, e16)
            rel = float(np.abs(l32 - l16).max() / np.abs(l32).max())
            print(f"{variant:16} {agree:>5}/{len(images):<5} {cl.min():>14.6f} {cl.mean():>9.6f} "
                  f"{ce.min():>11.6f} {ce.mean():>9.6f} {rel:>24.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
