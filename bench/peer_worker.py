#!/usr/bin/env python3
"""One peer engine's side of bench/cpu_peers.py, run with the peers' virtual environment's Python
(scripts/peers-venv.sh), never by the product. Loads the model the orchestrator exported, checks
nothing itself: writes its outputs on the orchestrator's input (for the orchestrator to compare
with ours) and prints one JSON line per batch size:

    {"engine": E, "batch": B, "images_per_s": X, "ms_per_batch": Y, "note": "..."}

Engines, each at its recommended CPU settings:
  onnxruntime        ONNX Runtime CPU EP, all graph optimisations, intra-op threads = --threads,
                     sequential execution.
  openvino-f32       OpenVINO CPU plugin, INFERENCE_PRECISION_HINT f32, LATENCY hint,
                     INFERENCE_NUM_THREADS = --threads, the model reshaped to each batch.
  openvino-bf16      the same with INFERENCE_PRECISION_HINT bf16 (OpenVINO's default on CPUs with
                     native bfloat16); only where the CPU has it.
  torch-eager        PyTorch 2.x (PyPI), channels_last, inference_mode, --threads threads.
  torch-compile      the same through torch.compile (inductor).
"""
import argparse
import json
import sys
import time

import numpy as np


def timed(run, x, seconds):
    for _ in range(2):
        run(x)
    calls, start = 0, time.perf_counter()
    while True:
        run(x)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls * x.shape[0] / elapsed, 1000 * elapsed / calls


def make_runner(args, batch):
    """(run(x) -> logits, note) for the engine at this batch size."""
    engine = args.engine
    if engine == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {name: x})[0]), f"onnxruntime {ort.__version__}"
    if engine.startswith("openvino"):
        import openvino as ov
        core = ov.Core()
        model = core.read_model(args.onnx)
        model.reshape([batch, 3, args.size, args.size])
        precision = "bf16" if engine == "openvino-bf16" else "f32"
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": args.threads,
        })
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        got = got.get_type_name() if hasattr(got, "get_type_name") else str(got)
        return run, f"openvino {ov.__version__}, precision {got}"
    if engine.startswith("torch"):
        import torch
        import torchvision
        torch.set_num_threads(args.threads)
        model = getattr(torchvision.models, args.variant)()
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
        model = model.eval().to(memory_format=torch.channels_last)
        if engine == "torch-compile":
            model = torch.compile(model)

        def run(x):
            with torch.inference_mode():
                t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
                return model(t).numpy()
        return run, f"torch {torch.__version__}"
    raise SystemExit(f"unknown engine {engine}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True)
    parser.add_argument("--onnx")
    parser.add_argument("--checkpoint")
    parser.add_argument("--variant", default="convnext_tiny")
    parser.add_argument("--input", required=True, help="[N, 3, size, size] float32 .npy")
    parser.add_argument("--output", required=True, help="where its logits on --input go")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    check = np.load(args.input)
    run, note = make_runner(args, check.shape[0])
    np.save(args.output, run(check))
    for batch in (int(b) for b in args.batches.split(",")):
        run, note = make_runner(args, batch)
        x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size),
                                                      dtype=np.float32)
        images_per_s, ms = timed(run, x, args.seconds)
        print(json.dumps({"engine": args.engine, "batch": batch, "images_per_s": images_per_s,
                          "ms_per_batch": ms, "note": note}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
