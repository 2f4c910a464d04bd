#!/usr/bin/python3
"""Trains the default model: a small ConvNeXt on scikit-learn's handwritten digits.

    /usr/bin/python3 default_model/train.py            (about two minutes on 2 cores)

Needs Debian's python3-torch, python3-torchvision, python3-sklearn and python3-pil (development
and test dependencies; the server never runs Python). Writes, next to this script:
  convnext_digits.safetensors  the weights, torchvision key layout
  labels.txt                   class names, one per line
  server.textproto             the server config that serves it (architecture, preprocessing)
  heldout.json                 the seeded 80/20 split's held-out indices, the model's prediction
                               for each, and the held-out accuracy

Data: the 1797 8x8 grayscale digits (values 0..16) that python3-sklearn ships. Each becomes an
8-bit grayscale PNG-equivalent image (value * 255 / 16, rounded), goes through exactly the
transform the server applies (PIL: RGB, Resize(32, bicubic), CenterCrop(32), ToTensor,
Normalize(0.5, 0.5)) and feeds a ConvNeXt with depths 1,1,2,1 and dims 16,32,64,128.
"""
import json
import os
import struct
import sys

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision import transforms
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261122
SIZE = 32
DEPTHS, DIMS = (1, 1, 2, 1), (16, 32, 64, 128)
EPOCHS, BATCH, LR = 60, 64, 3e-3

TRANSFORM = transforms.Compose([
    transforms.Resize(SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.CenterCrop(SIZE),
    transforms.ToTensor(),
    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
])


def digit_image(values):
    """An 8x8 digit (0..16) as the 8-bit grayscale image the PNGs hold."""
    return Image.fromarray(np.rint(values * 255.0 / 16.0).astype(np.uint8), mode="L")


def split(n):
    order = np.random.default_rng(SEED).permutation(n)
    cut = int(round(n * 0.8))
    return np.sort(order[:cut]), np.sort(order[cut:])


def build():
    settings = [CNBlockConfig(DIMS[i], DIMS[i + 1] if i < 3 else None, DEPTHS[i]) for i in range(4)]
    return ConvNeXt(settings, stochastic_depth_prob=0.0, num_classes=10)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    digits = load_digits()
    x = torch.stack([TRANSFORM(digit_image(v).convert("RGB")) for v in digits.images])
    y = torch.tensor(digits.target)
    train_idx, test_idx = split(len(y))
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    steps = EPOCHS * ((len(train_idx) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=g)]
        total = 0.0
        for i in range(0, len(perm), BATCH):
            b = perm[i:i + BATCH]
            # Augmentation: random shifts of up to 2 pixels (of 32), applied to the tensor.
            xb = x[b]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1}: train loss {total / len(train_idx):.4f}", file=sys.stderr)
    model.eval()
    with torch.no_grad():
        pred = model(x[torch.from_numpy(test_idx)]).argmax(1)
    correct = int((pred == y[torch.from_numpy(test_idx)]).sum())
    accuracy = correct / len(test_idx)
    print(f"held-out accuracy: {correct}/{len(test_idx)} = {accuracy:.4f}", file=sys.stderr)

    write_safetensors(os.path.join(HERE, "convnext_digits.safetensors"), model.state_dict())
    with open(os.path.join(HERE, "labels.txt"), "w") as f:
        f.write("".join(f"digit {d}\n" for d in range(10)))
    with open(os.path.join(HERE, "heldout.json"), "w") as f:
        json.dump({"seed": SEED, "indices": test_idx.tolist(), "labels": y[test_idx].tolist(),
                   "predictions": pred.tolist(), "correct": correct,
                   "accuracy": accuracy}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
