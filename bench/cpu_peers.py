#!/usr/bin/env python3
"""Benchmark: convnext-serve's CPU fast path against the engines a user would pick instead, in one
run, same machine, same threads, same weights. Asserts nothing; prints figures.

    scripts/peers-venv.sh                  # once: ONNX Runtime, OpenVINO (pinned, PyPI)
    /usr/bin/python3 bench/cpu_peers.py [--variant convnext_tiny] [--batches 1,8] [--threads 2]
        [--seconds 10] [--engines onnxruntime,openvino-f32,openvino-bf16,torch-eager,...]

1. A random-weight model (torchvision's architecture, Debian's torch; every layer scale 1 so
   that each block matters to the check) is saved as a checkpoint and exported once to ONNX
   (opset 17, dynamic batch).
2. Each peer (bench/peer_worker.py, run with the venv's Python; it installs nothing) computes
   the logits of a batch of random inputs; they are checked against convnext-run's on the same
   checkpoint and input before any timing: float32 peers within 1e-3 of the logits' scale,
   bfloat16 ones reported by top-1 agreement and cosine. A peer that disagrees is reported and
   not timed.
3. Ours: build/bin/model_throughput (float32 fast path, and bfloat16 where the CPU has native
   bfloat16), with its GEMM ceilings, then each peer, one after another, each for --seconds per
   batch size.
Prints the CPU's ISA, every figure and ours / peer. Engines missing from the venv are skipped
with a message (torch-eager/torch-compile need PyPI's torch: scripts/peers-venv.sh --torch).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oip_throughput import isa  # noqa: E402
ALL_ENGINES = "onnxruntime,openvino-f32,openvino-bf16,torch-eager,torch-compile"


def json_lines(text):
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="convnext_tiny")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--engines", default=ALL_ENGINES)
    parser.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    parser.add_argument("--venv", default=os.path.join(ROOT, "build", "venv-peers"))
    args = parser.parse_args()
    python = os.path.join(args.venv, "bin", "python")
    if not os.path.exists(python):
        print(f"no peers venv at {args.venv}: run scripts/peers-venv.sh first")
        return 2
    cpu = isa()
    native_bf16 = "avx512_bf16" in cpu or "amx_bf16" in cpu
    print(f"CPU: {cpu}")

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = getattr(torchvision.models, args.variant)().eval()
        state = model.state_dict()
        for k in state:
            if k.endswith("layer_scale"):
                state[k] = torch.ones_like(state[k])
        model.load_state_dict(state)
        ckpt = os.path.join(tmp, "model.pth")
        torch.save(state, ckpt)
        onnx = os.path.join(tmp, "model.onnx")
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), onnx, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        check = torch.randn(4, 3, 224, 224).numpy()
        check_path = os.path.join(tmp, "check.npy")
        np.save(check_path, check)
        ours_path = os.path.join(tmp, "ours.npy")
        r = subprocess.run([os.path.join(args.bin, "convnext-run"), "--checkpoint", ckpt,
                            "--input", check_path, "--output", ours_path,
                            f"--threads={args.threads}"], capture_output=True, text=True)
        if r.returncode != 0:
            print("convnext-run failed: " + r.stderr)
            return 1
        ours_logits = np.load(ours_path)

        # Ours first.
        r = subprocess.run([os.path.join(args.bin, "model_throughput"), "--variant",
                            args.variant, "--batches", args.batches, "--threads",
                            str(args.threads), "--seconds", str(args.seconds),
                            "--reference=false", "--aten=false", "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print("model_throughput failed: " + r.stderr)
            return 1
        for line in r.stdout.splitlines():
            if line.startswith("CPU:") or line.startswith("GEMM ceiling"):
                print(line)
        rows = {}
        for j in json_lines(r.stdout):
            name = {"fast": "convnext-serve f32", "fast-bf16": "convnext-serve bf16"}.get(
                j["path"])
            if name:
                rows.setdefault(name, {})[j["batch"]] = j["images_per_s"]

        notes = {}
        for engine in args.engines.split(","):
            if engine == "openvino-bf16" and not native_bf16:
                print(f"{engine}: skipped (no native bfloat16 on this CPU)")
                continue
            out_path = os.path.join(tmp, f"{engine}.npy")
            cmd = [python, os.path.join(ROOT, "bench", "peer_worker.py"), "--engine", engine,
                   "--onnx", onnx, "--checkpoint", ckpt, "--variant", args.variant, "--input",
                   check_path, "--output", out_path, "--batches", args.batches, "--threads",
                   str(args.threads), "--seconds", str(args.seconds)]
            # The check first: the worker writes its logits, then times; read them once it ends.
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{engine}: skipped ({last})")
                continue
            theirs = np.load(out_path)
            scale = float(np.abs(ours_logits).max())
            diff = float(np.abs(theirs - ours_logits).max()) / scale
            cos = float(np.min(np.sum(theirs * ours_logits, 1) / np.linalg.norm(theirs, axis=1)
                               / np.linalg.norm(ours_logits, axis=1)))
            agree = int(np.sum(theirs.argmax(1) == ours_logits.argmax(1)))
            results = json_lines(r.stdout)
            note = results[0]["note"] if results else ""
            bf16 = "bf16" in engine or "precision bf16" in note
            ok = (cos > 0.99) if bf16 else (diff <= 1e-3)
            notes[engine] = (f"{note}; vs ours: max diff {diff:.1e} of the logits' scale, "
                             f"cosine {cos:.6f}, top-1 {agree}/{len(check)}")
            if not ok:
                print(f"{engine}: outputs disagree with ours ({notes[engine]}): not timed")
                continue
            for j in results:
                rows.setdefault(engine, {})[j["batch"]] = j["images_per_s"]

    batches = [int(b) for b in args.batches.split(",")]
    print(f"\n{args.variant}, 224x224, {args.threads} threads, >= {args.seconds:g} s per figure; "
          "img/s (ours f32 / this; ours bf16 / this)")
    header = f"{'engine':22}" + "".join(f"{'batch ' + str(b):>30}" for b in batches)
    print(header)
    ours32 = rows.get("convnext-serve f32", {})
    ours16 = rows.get("convnext-serve bf16", {})
    for name, by_batch in rows.items():
        cells = []
        for b in batches:
            v = by_batch.get(b)
            if v is None:
                cells.append(f"{'-':>30}")
                continue
            r32 = f"{ours32[b] / v:.2f}x" if b in ours32 else "-"
            r16 = f"{ours16[b] / v:.2f}x" if b in ours16 else "-"
            cells.append(f"{v:>12.2f} ({r32:>6}; {r16:>6})")
        print(f"{name:22}" + "".join(cells))
    for engine, note in notes.items():
        print(f"  {engine}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
