#!/usr/bin/python3
"""Embed of early stages only, against the full depth, through convnext-server: a random-weight
convnext_tiny (torchvision layout), 224x224 tensor inputs, one call of --batch images at a time,
alternating rounds. An Embed that asks only for stages 1..k stops after stage k (model/batch.h,
DeepestStage). Prints img/s per deepest stage, the time saved against the full pass, and the
CPU's ISA.

  bench/stage_truncation.py [--batch 8] [--seconds 5] [--rounds 2]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "build", "tests", "pygen"))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
from convnext.v1 import image_model_pb2 as pb  # noqa: E402
from convnext.v1 import image_model_pb2_grpc as pb_grpc  # noqa: E402
from convnext_reference import write_safetensors  # noqa: E402
from oip_throughput import isa, start_server  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {isa()}")
    d = tempfile.mkdtemp()
    checkpoint = os.path.join(d, "tiny.safetensors")
    torch.manual_seed(0)
    write_safetensors(checkpoint, torchvision.models.convnext_tiny().state_dict())
    proc, port = start_server(
        ["--model", f"tiny={checkpoint}", "--max_batch_size", str(args.batch)])
    stub = pb_grpc.ImageModelServiceStub(grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 << 20)]))
    x = np.random.default_rng(0).standard_normal((3, 224, 224)).astype("<f4")
    image = pb.Image(tensor=pb.Tensor(shape=[3, 224, 224], data=x.tobytes()))
    requests = {k: pb.EmbedRequest(model="tiny", images=[image] * args.batch, stages=[k])
                for k in (1, 2, 3, 4)}
    for r in requests.values():
        stub.Embed(r, timeout=300)  # Warm-up.
    rates = {k: [] for k in requests}
    for _ in range(args.rounds):
        for k, r in requests.items():
            n, start = 0, time.time()
            while time.time() - start < args.seconds:
                stub.Embed(r, timeout=300)
                n += args.batch
            rates[k].append(n / (time.time() - start))
    full = max(rates[4])
    print(f"convnext_tiny, Embed of one stage map, {args.batch} images a call, 224x224, "
          f"best of {args.rounds} rounds of {args.seconds:.0f} s:")
    for k in (1, 2, 3, 4):
        best = max(rates[k])
        print(f"  stages 1..{k}: {best:7.1f} img/s   time per image {1000 / best:6.1f} ms "
              f"({100 * (1 - full / best):4.0f}% less than the full depth)")
    proc.terminate()
    proc.wait(timeout=60)


if __name__ == "__main__":
    main()
