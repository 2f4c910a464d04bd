#!/usr/bin/python3
"""Test oracle: random-weight torchvision ConvNeXts, their checkpoints and reference outputs.

Test-only (needs Debian's python3-torch and python3-torchvision; the product never runs Python).

    /usr/bin/python3 tests/python/convnext_reference.py --out build/testdata

writes, for every case below, CASE.safetensors (torchvision key names), CASE.input.npy and
CASE.logits.npy, and for feature cases CASE.embedding.npy and CASE.stage{1..4}.npy; manifest.json
lists the cases with torchvision's parameter counts. Regeneration is skipped when the manifest was
written by this same script (same content hash).

Weights are random but not torchvision's initialisation as is: torchvision sets every layer scale
to 1e-6, which would make each block nearly the identity and a parity test nearly blind to the
blocks. Layer scales, LayerNorm affine parameters and biases are drawn so that every block
contributes visibly to the output.
"""
import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch
from torchvision.models import convnext as tvc

VARIANTS = {
    "convnext_tiny": tvc.convnext_tiny,
    "convnext_small": tvc.convnext_small,
    "convnext_base": tvc.convnext_base,
    "convnext_large": tvc.convnext_large,
}

# name -> (builder args, input shape for logits, input shape for features or None)
CASES = {
    "tiny": ("convnext_tiny", (2, 3, 224, 224), (1, 3, 256, 320)),
    "small": ("convnext_small", (1, 3, 64, 64), None),
    "base": ("convnext_base", (1, 3, 64, 64), None),
    "large": ("convnext_large", (1, 3, 64, 64), None),
    "xlarge": ("convnext_xlarge", (1, 3, 64, 64), None),
    # A custom architecture with its own number of classes, input not a multiple of 32.
    "custom": (((2, 2, 2, 2), (16, 32, 48, 64), 10), (3, 3, 100, 72), (2, 3, 96, 160)),
}


def build(spec, seed):
    torch.manual_seed(seed)
    if spec == "convnext_xlarge":  # torchvision 0.14 has no xlarge builder.
        spec = ((3, 3, 27, 3), (256, 512, 1024, 2048), 1000)
    if isinstance(spec, str):
        model = VARIANTS[spec]()
    else:
        depths, dims, num_classes = spec
        settings = [tvc.CNBlockConfig(dims[i], dims[i + 1] if i < 3 else None, depths[i])
                    for i in range(4)]
        model = tvc.ConvNeXt(settings, stochastic_depth_prob=0.0, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.25)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif p.dim() == 1:  # LayerNorm weight.
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.float64: "F64", torch.int64: "I64"}


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def save_npy(path, t):
    np.save(path, t.detach().numpy().astype(np.float32))


def save_regions(out_dir, case, maps):
    """Region features of image 0 of the features input (160 x 96) by torchvision.ops.roi_align,
    for the C++ end-to-end test of Embed's regions: the boxes, stage 2 in 2 x 2 bins (2 samples a
    side, aligned) and stage 4 as vectors (adaptive sampling, not aligned)."""
    from torchvision.ops import roi_align
    boxes = torch.tensor([[0, 0, 160, 96], [10.5, 7.25, 90, 60], [100, 40, 101, 41],
                          [150, 80, 160, 96], [33, 20, 33, 70]])
    save_npy(os.path.join(out_dir, f"{case}.region_boxes.npy"), boxes)
    save_npy(os.path.join(out_dir, f"{case}.regions.stage2.npy"),
             roi_align(maps[1][:1], [boxes], 2, spatial_scale=1 / 8, sampling_ratio=2,
                       aligned=True))
    save_npy(os.path.join(out_dir, f"{case}.regions.stage4.npy"),
             roi_align(maps[3][:1], [boxes], 1, spatial_scale=1 / 32, sampling_ratio=-1,
                       aligned=False).flatten(1))


def generate(out_dir, only, preprocess=True):
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    manifest = {"cases": {}}
    for seed, (case, (spec, shape, feat_shape)) in enumerate(CASES.items()):
        if only and case not in only:
            continue
        model = build(spec, seed * 10)
        sd = model.state_dict()
        write_safetensors(os.path.join(out_dir, f"{case}.safetensors"), sd)
        g = torch.Generator().manual_seed(1000 + seed)
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            save_npy(os.path.join(out_dir, f"{case}.input.npy"), x)
            save_npy(os.path.join(out_dir, f"{case}.logits.npy"), model(x))
            if feat_shape is not None:
                xf = torch.randn(feat_shape, generator=g)
                save_npy(os.path.join(out_dir, f"{case}.features_input.npy"), xf)
                h = xf
                maps = []
                for i, layer in enumerate(model.features):
                    h = layer(h)
                    if i % 2 == 1:
                        maps.append(h)
                        save_npy(os.path.join(out_dir, f"{case}.stage{len(maps)}.npy"), h)
                if case == "custom":
                    save_regions(out_dir, case, maps)
                pooled = model.classifier[1](model.classifier[0](model.avgpool(h)))
                save_npy(os.path.join(out_dir, f"{case}.embedding.npy"), pooled)
            if case == "custom":
                import checkpoint_formats
                checkpoint_formats.write(os.path.join(out_dir, "formats"), model, x, xf,
                                         write_safetensors, save_npy)
        manifest["cases"][case] = {
            "params": sum(p.numel() for p in model.parameters()),
            "num_classes": model.classifier[2].out_features,
            "features": feat_shape is not None,
        }
        print(f"convnext_reference: {case}: {manifest['cases'][case]['params']} parameters",
              file=sys.stderr)
        del model, sd
    if preprocess:
        import preprocess_reference
        preprocess_reference.generate(os.path.join(out_dir, "preprocess"))
    return manifest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", default="", help="comma-separated subset of: " +
                        ", ".join(CASES))
    parser.add_argument("--no_preprocess", action="store_true",
                        help="skip the preprocessing references (they need Debian's photos; the "
                        "model-only build has no preprocessing)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    only = [c for c in args.cases.split(",") if c]
    here = os.path.dirname(os.path.abspath(__file__))
    sha = hashlib.sha256(args.cases.encode())
    for name in ("convnext_reference.py", "checkpoint_formats.py", "preprocess_reference.py"):
        with open(os.path.join(here, name), "rb") as f:
            sha.update(f.read())
    digest = sha.hexdigest()
    manifest_path = os.path.join(args.out, "manifest.json")
    try:
        with open(manifest_path) as f:
            old = json.load(f)
            # Up to date; a set made without the preprocessing references serves only a run
            # that skips them too.
            if old.get("script_sha256") == digest and (args.no_preprocess or
                                                       old.get("preprocess", True)):
                return 0
    except (OSError, ValueError):
        pass
    manifest = generate(args.out, only, not args.no_preprocess)
    manifest["script_sha256"] = digest
    manifest["preprocess"] = not args.no_preprocess
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
