#!/usr/bin/python3
"""One trunk, several heads against the same classifiers served as separate models, through
convnext-server: --heads classifiers that share one random-weight trunk (--variant, torchvision
layout; each with its own final norm and classifier), --clients concurrent clients in a closed
loop, each call one --size x --size tensor image sent to one of the classifiers at random, asking
for the top 5 classes.

  separate models   each classifier a model of its own (its whole checkpoint): one batcher and
                    one trunk in memory per classifier; a batch holds one classifier's calls
  shared trunk      the first classifier a model, the others its heads (ModelConfig.head): one
                    batcher and one trunk; a batch mixes every classifier's calls

Prints img/s, latency percentiles, mean batch size and the server's resident memory of each,
the ratio, and the CPU's ISA.

  bench/shared_trunk.py [--variant convnext_tiny] [--heads 3] [--seconds 20] [--clients 8]
                        [--max_batch_size 8] [--max_queue_delay_us 20000] [--size 224]
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
from oip_throughput import closed_loop, isa, rss_mb, start_server  # noqa: E402


def run(port, names, image, clients, seconds):
    """Closed loop: returns (calls/s, latencies in ms)."""
    stub = pb_grpc.ImageModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return closed_loop(
        lambda rng: stub.Classify(pb.ClassifyRequest(model=names[rng.integers(len(names))],
                                                     images=[image], top_k=5), timeout=600),
        clients, seconds)


def mean_batch(port):
    """Images per forward pass so far, over every model's statistics (a head's passes are its
    trunk's)."""
    stub = pb_grpc.ImageModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    images = batches = 0
    for info in stub.ListModels(pb.ListModelsRequest(), timeout=60).models:
        if info.trunk_model:
            continue
        for size, count in info.stats.batch_sizes.items():
            images += size * count
            batches += count
    return images / max(1, batches)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="convnext_tiny")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--max_queue_delay_us", type=int, default=20000)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    print(f"CPU: {isa()}")
    print(f"{args.variant} (random weights), {args.heads} classifiers on one trunk, "
          f"{args.clients} clients, {args.size}x{args.size} tensors, max_batch_size "
          f"{args.max_batch_size}, max_queue_delay_us {args.max_queue_delay_us}, "
          f"{args.seconds:.0f} s each:")
    d = tempfile.mkdtemp()
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.variant)()
    names = [f"c{i}" for i in range(args.heads)]
    paths = []
    for i in range(args.heads):
        sd = dict(model.state_dict())
        if i > 0:  # Another head on the same trunk.
            dims = sd["classifier.0.weight"].shape[0]
            sd["classifier.0.weight"] = 1 + 0.1 * torch.randn(dims)
            sd["classifier.2.weight"] = 0.02 * torch.randn(100 + i, dims)
            sd["classifier.2.bias"] = torch.zeros(100 + i)
        paths.append(os.path.join(d, f"{names[i]}.safetensors"))
        write_safetensors(paths[i], sd)
    batching = (f' batching {{ max_batch_size: {args.max_batch_size} '
                f'max_queue_delay_us: {args.max_queue_delay_us} }}')
    preprocessing = f' preprocessing {{ size: {args.size} }}'
    configs = {
        "separate models": "".join(
            f'model {{ name: "{n}" checkpoint: "{p}"{batching}{preprocessing} }}\n'
            for n, p in zip(names, paths)),
        "shared trunk": (f'model {{ name: "{names[0]}" checkpoint: "{paths[0]}"{batching}'
                         f'{preprocessing}' +
                         "".join(f' head {{ name: "{n}" checkpoint: "{p}" }}'
                                 for n, p in zip(names[1:], paths[1:])) + " }\n"),
    }
    x = np.random.default_rng(0).standard_normal((3, args.size, args.size)).astype("<f4")
    image = pb.Image(tensor=pb.Tensor(shape=list(x.shape), data=x.tobytes()))
    results = {}
    for label, text in configs.items():
        config = os.path.join(d, "server.pbtxt")
        with open(config, "w") as f:
            f.write(text)
        proc, port = start_server(["--config", config])
        run(port, names, image, args.clients, min(5.0, args.seconds / 4))  # Warm-up.
        rate, latencies = run(port, names, image, args.clients, args.seconds)
        batch = mean_batch(port)
        rss = rss_mb(proc.pid)
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        results[label] = rate
        print(f"  {label:16s} {rate:6.2f} img/s  p50 {p50:6.0f} ms  p90 {p90:6.0f} ms  "
              f"p99 {p99:6.0f} ms  mean batch {batch:4.2f} (warm-up included)  "
              f"resident {rss:6.0f} MB")
        proc.terminate()
        proc.wait(timeout=120)
    print(f"  shared trunk / separate models: "
          f"{results['shared trunk'] / results['separate models']:.2f}x")


if __name__ == "__main__":
    main()
