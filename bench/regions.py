#!/usr/bin/python3
"""Region embeddings against crop-and-re-encode, through convnext-server: a random-weight
convnext_tiny (torchvision layout), Debian's photos (python3-skimage's chelsea, coffee,
astronaut), --boxes boxes per photo (random, inside the photo).

  regions KEEP_SIZE       one Embed per photo at its own size with its boxes: RoIAlign of each box
                          on stage 4 (output_size 1), one backbone pass per photo
  regions CLASSIFICATION  the same at the classification transform (224 x 224)
  crop + re-encode        the photo's boxes cropped on the client (raw RGB pixels) and sent as one
                          Embed of --boxes images (CLASSIFICATION: each resized to 224), the
                          pooled embedding of each: --boxes backbone passes per photo

Prints photos/s and boxes/s for each (one call at a time, best of --rounds rounds of --seconds),
the ratio to crop + re-encode, and the CPU's ISA.

  bench/regions.py [--boxes 16] [--seconds 5] [--rounds 2]
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

PHOTOS = "/usr/lib/python3/dist-packages/skimage/data"


def boxes_for(rng, width, height, n):
    """n boxes inside the photo, each side between a tenth and a half of the photo's."""
    w = rng.uniform(0.1, 0.5, n) * width
    h = rng.uniform(0.1, 0.5, n) * height
    x = rng.uniform(0, 1, n) * (width - w)
    y = rng.uniform(0, 1, n) * (height - h)
    return np.stack([x, y, x + w, y + h], 1).astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--boxes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {isa()}")
    from PIL import Image
    d = tempfile.mkdtemp()
    checkpoint = os.path.join(d, "tiny.safetensors")
    torch.manual_seed(0)
    write_safetensors(checkpoint, torchvision.models.convnext_tiny().state_dict())
    proc, port = start_server(["--model", f"tiny={checkpoint}",
                               "--max_batch_size", str(max(8, args.boxes))])
    stub = pb_grpc.ImageModelServiceStub(grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 << 20)]))
    rng = np.random.default_rng(0)
    calls = {"regions KEEP_SIZE": [], "regions CLASSIFICATION": [], "crop + re-encode": []}
    sizes = []
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        path = os.path.join(PHOTOS, name)
        rgb = np.asarray(Image.open(path).convert("RGB"))
        height, width = rgb.shape[:2]
        sizes.append(f"{name} {width}x{height}")
        boxes = boxes_for(rng, width, height, args.boxes)
        with open(path, "rb") as f:
            photo = pb.Image(encoded=f.read())
        regions = pb.ImageRegions(boxes=[pb.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3])
                                         for b in boxes])
        for resize, key in ((pb.KEEP_SIZE, "regions KEEP_SIZE"),
                            (pb.CLASSIFICATION, "regions CLASSIFICATION")):
            calls[key].append(pb.EmbedRequest(model="tiny", images=[photo], regions=[regions],
                                              resize=resize))
        crops = []
        for x1, y1, x2, y2 in boxes:
            c = np.ascontiguousarray(rgb[int(y1):max(int(y2), int(y1) + 1),
                                         int(x1):max(int(x2), int(x1) + 1)])
            crops.append(pb.Image(raw=pb.RawImage(width=c.shape[1], height=c.shape[0],
                                                  channels=3, pixels=c.tobytes())))
        calls["crop + re-encode"].append(
            pb.EmbedRequest(model="tiny", images=crops, include_embedding=True))
    for requests in calls.values():
        for r in requests:
            stub.Embed(r, timeout=300)  # Warm-up.
    rates = {k: [] for k in calls}
    for _ in range(args.rounds):
        for key, requests in calls.items():
            n, start = 0, time.time()
            while time.time() - start < args.seconds:
                stub.Embed(requests[n % len(requests)], timeout=300)
                n += 1
            rates[key].append(n / (time.time() - start))
    base = max(rates["crop + re-encode"])
    print(f"convnext_tiny, {args.boxes} boxes per photo ({', '.join(sizes)}), one call at a "
          f"time, best of {args.rounds} rounds of {args.seconds:.0f} s:")
    for key in calls:
        best = max(rates[key])
        print(f"  {key:24s} {best:6.2f} photos/s  {best * args.boxes:7.1f} boxes/s  "
              f"{best / base:5.2f}x crop + re-encode")
    proc.terminate()
    proc.wait(timeout=60)


if __name__ == "__main__":
    main()
