#!/usr/bin/env python3
"""PyTorch eager on a device: the peer bench/device_throughput measures ours against, in the same
run (it runs this with the Python that has torch and torchvision: Debian's on our machines, the
GPU machine's own there). torchvision's ConvNeXt with random weights, eval mode, channels_last,
inputs already on the device; float16/bfloat16 through autocast (PyTorch's recommended mixed
precision), float32 with TF32 off. With --compile, torch.compile's figure too (PyTorch 2.x).
Prints one JSON line per figure:

    {"variant": V, "dtype": D, "batch": B, "images_per_s": X, "ms_per_batch": Y}

and plain lines with notes (versions, what was skipped).
"""
import argparse
import contextlib
import json
import time

import torch
import torchvision

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def builder(variant):
    if hasattr(torchvision.models, variant):
        return getattr(torchvision.models, variant)
    if variant == "convnext_xlarge":  # torchvision has no XL builder: its architecture by hand.
        from torchvision.models import convnext as tvc
        settings = [tvc.CNBlockConfig(256, 512, 3), tvc.CNBlockConfig(512, 1024, 3),
                    tvc.CNBlockConfig(1024, 2048, 27), tvc.CNBlockConfig(2048, None, 3)]
        return lambda: tvc.ConvNeXt(settings, stochastic_depth_prob=0.0)
    raise SystemExit(f"unknown variant {variant}")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, x, dtype, device, seconds):
    autocast = (torch.autocast(device_type=device.type, dtype=dtype)
                if dtype != torch.float32 else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for _ in range(3):
            model(x)
        sync(device)
        calls, start = 0, time.perf_counter()
        while True:
            model(x).float().cpu()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and calls >= 3:
                return calls * x.shape[0] / elapsed, 1000 * elapsed / calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--variants", default="convnext_tiny")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile (dtype label gets a '+compile' suffix)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    print(f"PyTorch {torch.__version__}, torchvision {torchvision.__version__}", flush=True)
    for variant in args.variants.split(","):
        torch.manual_seed(0)
        model = builder(variant)().eval().to(device, memory_format=torch.channels_last)
        runs = [(model, "")]
        if args.compile:
            runs.append((torch.compile(model), "+compile"))
        for name in args.dtypes.split(","):
            dtype = DTYPES[name]
            if device.type == "cpu" and dtype == torch.float16:
                print(f"{variant} {name}: skipped (no float16 autocast on the CPU)", flush=True)
                continue
            for m, suffix in runs:
                for batch in (int(b) for b in args.batches.split(",")):
                    x = torch.randn(batch, 3, args.size, args.size, device=device).to(
                        memory_format=torch.channels_last)
                    ips, ms = measure(m, x, dtype, device, args.seconds)
                    print(json.dumps({"variant": variant, "dtype": name + suffix, "batch": batch,
                                      "images_per_s": ips, "ms_per_batch": ms}), flush=True)


if __name__ == "__main__":
    main()
