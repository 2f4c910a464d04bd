#!/usr/bin/python3
"""Reference throughput: torchvision's ConvNeXt in eager mode (Debian's python3-torch).

Called by bench/model_throughput in the same run, so both sides are measured on the same machine
state. Prints one JSON object per batch size: {"batch": B, "images_per_s": X, "ms_per_batch": Y}.
"""
import argparse
import json
import time

import torch
from torchvision.models import convnext as tvc

BUILDERS = {"convnext_tiny": tvc.convnext_tiny, "convnext_small": tvc.convnext_small,
            "convnext_base": tvc.convnext_base, "convnext_large": tvc.convnext_large}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="convnext_tiny")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = BUILDERS[args.variant]().eval()
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(batch, 3, args.size, args.size)
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            n, start = 0, time.perf_counter()
            while True:
                model(x)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= args.seconds and n >= 3:
                    break
        print(json.dumps({"batch": batch, "images_per_s": n * batch / elapsed,
                          "ms_per_batch": 1000 * elapsed / n}), flush=True)


if __name__ == "__main__":
    main()
