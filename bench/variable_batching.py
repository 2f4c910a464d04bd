#!/usr/bin/python3
"""Variable-size batching against same-shape-only batching, through convnext-server, on a
mixed-size KEEP_SIZE workload: a random-weight model (--variant, torchvision layout), --clients
concurrent clients in a closed loop, each call one tensor image whose height and width are drawn
from --sides (every combination is a different shape; they fall in fewer resolution buckets),
asking for the pooled embedding.

  same shape only   max_batch_pixels 0: only calls of one shape share a batch
  bucketed          max_batch_pixels = --budget (default: max_batch_size images of the largest
                    bucket): calls of one bucket share a batch, padded and masked

Prints img/s, latency percentiles and mean batch size of each, the ratio, and the CPU's ISA.

  bench/variable_batching.py [--variant convnext_tiny] [--seconds 20] [--clients 8]
                             [--max_batch_size 8] [--sides 384,416,448,480,512]
"""
import argparse
import os
import sys
import tempfile

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
from oip_throughput import closed_loop, isa, start_server  # noqa: E402


def bucket_side(side):
    """server/model_host.cc BucketSide."""
    power = 1
    while power * 2 <= side:
        power *= 2
    step = max(32, power // 4)
    return -(-side // step) * step


def run(port, images, clients, seconds):
    """Closed loop: returns (calls/s, latencies in ms)."""
    stub = pb_grpc.ImageModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return closed_loop(
        lambda rng: stub.Embed(pb.EmbedRequest(images=[images[rng.integers(len(images))]],
                                               include_embedding=True, resize=pb.KEEP_SIZE),
                               timeout=600), clients, seconds)


def mean_batch(port):
    """Images per batch so far, from the server's ModelInfo statistics."""
    stub = pb_grpc.ImageModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    info = stub.ListModels(pb.ListModelsRequest(), timeout=60).models[0]
    sizes = info.stats.batch_sizes
    batches = sum(sizes.values())
    return sum(k * v for k, v in sizes.items()) / max(1, batches)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="convnext_tiny")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--max_queue_delay_us", type=int, default=20000)
    parser.add_argument("--sides", default="384,416,448,480,512")
    parser.add_argument("--budget", type=int, default=0)
    args = parser.parse_args()
    sides = [int(s) for s in args.sides.split(",")]
    shapes = [(h, w) for h in sides for w in sides]
    largest = max(bucket_side(h) * bucket_side(w) for h, w in shapes)
    budget = args.budget or args.max_batch_size * largest
    buckets = sorted({(bucket_side(h), bucket_side(w)) for h, w in shapes})
    print(f"CPU: {isa()}")
    print(f"{args.variant} (random weights), {args.clients} clients, {len(shapes)} shapes "
          f"(sides {args.sides}) in {len(buckets)} buckets, max_batch_size "
          f"{args.max_batch_size}, max_queue_delay_us {args.max_queue_delay_us}, "
          f"{args.seconds:.0f} s each:")
    d = tempfile.mkdtemp()
    checkpoint = os.path.join(d, "model.safetensors")
    torch.manual_seed(0)
    write_safetensors(checkpoint, getattr(torchvision.models, args.variant)().state_dict())
    rng = np.random.default_rng(0)
    images = []
    for h, w in shapes:
        x = rng.standard_normal((3, h, w)).astype("<f4")
        images.append(pb.Image(tensor=pb.Tensor(shape=[3, h, w], data=x.tobytes())))
    results = {}
    for name, pixels in (("same shape only", 0), ("bucketed", budget)):
        proc, port = start_server(["--model", f"m={checkpoint}", "--max_batch_size",
                                   str(args.max_batch_size), "--max_queue_delay_us",
                                   str(args.max_queue_delay_us), "--max_batch_pixels",
                                   str(pixels)])
        run(port, images, args.clients, min(5.0, args.seconds / 4))  # Warm-up.
        rate, latencies = run(port, images, args.clients, args.seconds)
        batch = mean_batch(port)
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        results[name] = rate
        label = f"{name} (max_batch_pixels {pixels})"
        print(f"  {label:40s} {rate:6.2f} img/s  p50 {p50:6.0f} ms  p90 {p90:6.0f} ms  "
              f"p99 {p99:6.0f} ms  mean batch {batch:4.2f} (warm-up included)")
        proc.terminate()
        proc.wait(timeout=120)
    print(f"  bucketed / same shape only: {results['bucketed'] / results['same shape only']:.2f}x")


if __name__ == "__main__":
    main()
