#!/usr/bin/python3
"""What a hot reload costs: convnext-server serving a random-weight ConvNeXt (torchvision layout,
safetensors) under a steady Classify load, reloaded with another checkpoint of the same variant
through ModelControl.LoadModel. Prints the reload's wall time and the server's load_seconds
(checkpoint, warm-up), the server's resident memory before, at its peak during the reload
(sampled every 10 ms) and after the old version is freed, and the calls sent / answered / failed
while it happened (the design says none fail). Also the CPU's ISA.

  bench/reload.py [--variant convnext_tiny] [--clients 2] [--reloads 2]

Needs build/bin (scripts/build.sh) and Debian's python3-torch/-torchvision/-grpcio.
"""
import argparse
import os
import sys
import tempfile
import threading
import time

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
from oip_throughput import isa, rss_mb, start_server  # noqa: E402

PHOTO = os.path.join(ROOT, "samples", "digit_3_heldout_23.png")


def checkpoint(variant, seed, path):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, variant)()
    write_safetensors(path, model.state_dict())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="convnext_tiny")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--reloads", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {isa()}")
    d = tempfile.mkdtemp()
    paths = [os.path.join(d, f"{args.variant}_{i}.safetensors") for i in range(2)]
    for i, p in enumerate(paths):
        checkpoint(args.variant, i, p)
    size_mb = os.path.getsize(paths[0]) / 2**20
    proc, port = start_server(["--enable_model_control", "--model", f"m={paths[0]}"])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ImageModelServiceStub(channel)
    control = pb_grpc.ModelControlStub(channel)
    with open(PHOTO, "rb") as f:
        request = pb.ClassifyRequest(model="m", images=[pb.Image(encoded=f.read())], top_k=1)
    stub.Classify(request, timeout=120)

    stop = threading.Event()
    counts = {"sent": 0, "answered": 0, "failed": 0}
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            with lock:
                counts["sent"] += 1
            try:
                stub.Classify(request, timeout=300)
                key = "answered"
            except grpc.RpcError:
                key = "failed"
            with lock:
                counts[key] += 1

    peak = [0.0]
    sampling = threading.Event()

    def sampler():
        while not stop.is_set():
            if sampling.is_set():
                peak[0] = max(peak[0], rss_mb(proc.pid))
            time.sleep(0.01)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    time.sleep(2)
    print(f"{args.variant}: checkpoint {size_mb:.0f} MB; {args.clients} clients calling "
          f"Classify throughout")
    for i in range(args.reloads):
        before = rss_mb(proc.pid)
        peak[0] = before
        sampling.set()
        start = time.time()
        r = control.LoadModel(pb.LoadModelRequest(
            config=f'name: "m" checkpoint: "{paths[(i + 1) % 2]}"'), timeout=600)
        wall = time.time() - start
        # Wait until the old version is freed (no DRAINING entry left).
        while any(m.state == pb.DRAINING for m in
                  stub.ListModels(pb.ListModelsRequest(), timeout=30).models):
            time.sleep(0.05)
        time.sleep(0.5)
        sampling.clear()
        after = rss_mb(proc.pid)
        print(f"reload {i + 1}: LoadModel {wall:.2f} s (server load_seconds {r.load_seconds:.2f});"
              f" RSS {before:.0f} MB before, {peak[0]:.0f} MB peak, {after:.0f} MB after the old "
              f"version was freed")
    stop.set()
    for t in threads:
        t.join()
    print(f"calls during the run: {counts['sent']} sent, {counts['answered']} answered, "
          f"{counts['failed']} failed")
    proc.terminate()
    proc.wait(timeout=60)


if __name__ == "__main__":
    main()
