"""compute_dtype end to end (server/config.proto): what convnext-server computes the blocks in, as
configured, reported (GetModel, the log) and served.

- AUTO picks bfloat16 only where oneDNN uses AMX, float32 elsewhere, and says why;
- BF16 on a CPU without native bfloat16 (forced here by lowering oneDNN's instruction set with
  ONEDNN_MAX_CPU_ISA) is a start-up error that names the instruction set, and AUTO falls back;
- on a CPU with native bfloat16, BF16 serves the default digits model: every held-out digit
  through gRPC, top-1 agreement with float32 and the held-out accuracy printed (README,
  Numerics), and both held to bounds. Skipped, with a message, on CPUs without it.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_test import HELDOUT, ROOT, digit_png  # noqa: E402
from server_e2e_test import BIN, FAST_PATH, Server, pb  # noqa: E402

DIGITS = os.path.join(ROOT, "default_model")
NATIVE_BF16_ISAS = ("avx512_core_bf16", "avx512_core_amx")


def config_text(dtypes):
    """A config serving the digits model once per (name, compute_dtype)."""
    models = []
    for name, dtype in dtypes:
        models.append(f"""
model {{
  name: "{name}"
  checkpoint: "{DIGITS}/convnext_digits.safetensors"
  labels_file: "{DIGITS}/labels.txt"
  compute_dtype: {dtype}
  preprocessing {{ size: 32 crop_pct: 1.0 interpolation: "bicubic"
                  mean: [0.5, 0.5, 0.5] std: [0.5, 0.5, 0.5] }}
  batching {{ max_batch_size: 32 max_queue_size: 512 }}
}}""")
    return "\n".join(models)


def write_config(dtypes):
    f = tempfile.NamedTemporaryFile("w", suffix=".textproto", delete=False)
    f.write(config_text(dtypes))
    f.close()
    return f.name


def failed_start(text, env=None):
    """Runs convnext-server on config `text`, expecting it to fail the start: its result."""
    with tempfile.NamedTemporaryFile("w", suffix=".textproto") as f:
        f.write(text)
        f.flush()
        return subprocess.run([os.path.join(BIN, "convnext-server"), "--port", "0",
                               "--metrics_port", "0", "--http_port", "0", "--config", f.name],
                              capture_output=True, text=True, timeout=120, env=env)


def classify_one_digit(server):
    reply = server.stub.Classify(
        pb.ClassifyRequest(images=[pb.Image(encoded=digit_png(load_digits().images[0]))],
                           top_k=1), timeout=60)
    return len(reply.results)


def start(dtypes, env=None):
    path = write_config(dtypes)
    try:
        return Server("--config", path, env=env)
    finally:
        os.unlink(path)


def isa_of(reason):
    match = re.search(r"oneDNN ISA (\w+)", reason)
    return match.group(1) if match else None


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@unittest.skipUnless(FAST_PATH, "this build has no oneDNN fast path (a LibTorch 2.x build): "
                     "WithoutTheFastPathTest checks what BF16 and AUTO do there")
class ComputeDtypeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # AUTO reports the instruction set oneDNN uses here, which decides what the rest expects.
        server = start([("auto", "AUTO")])
        try:
            info = server.stub.GetModel(pb.GetModelRequest(name="auto"), timeout=10)
            cls.auto_info = info
            cls.log = "".join(server.lines)
        finally:
            assert server.stop() == 0
        cls.isa = isa_of(cls.auto_info.compute_dtype_reason)

    def test_auto_picks_bfloat16_only_with_amx_and_says_why(self):
        info = self.auto_info
        self.assertIsNotNone(self.isa, info.compute_dtype_reason)
        # The ISA oneDNN reports is one the CPU has.
        flags = cpu_flags()
        if self.isa in NATIVE_BF16_ISAS:
            self.assertTrue({"avx512_bf16", "amx_bf16"} & flags, self.isa)
        if self.isa == "avx512_core_amx":
            self.assertEqual(info.compute_dtype, "bfloat16")
            self.assertIn("AUTO: AMX on this CPU", info.compute_dtype_reason)
        else:
            self.assertEqual(info.compute_dtype, "float32")
            expected = ("no AMX" if self.isa in NATIVE_BF16_ISAS else "no native bfloat16")
            self.assertIn(expected, info.compute_dtype_reason)
        self.assertRegex(self.log, r"event=compute_dtype_chosen .*model=auto .*compute_dtype="
                         + info.compute_dtype)
        self.assertRegex(self.log, r"event=model_loaded .*model=auto .*compute_dtype="
                         + info.compute_dtype)

    def test_bf16_without_native_bfloat16_is_a_startup_error_and_auto_falls_back(self):
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
        r = failed_start(config_text([("digits", "BF16")]), env=env)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("model 'digits' version 1: ", r.stderr)
        self.assertIn("bfloat16 blocks need a CPU with native bfloat16", r.stderr)
        self.assertIn("oneDNN runs this one as avx2", r.stderr)
        server = start([("digits", "AUTO")], env=env)
        try:
            info = server.stub.GetModel(pb.GetModelRequest(), timeout=10)
            self.assertEqual(info.compute_dtype, "float32")
            self.assertIn("no native bfloat16 on this CPU (oneDNN ISA avx2)",
                          info.compute_dtype_reason)
            self.assertEqual(classify_one_digit(server), 1)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_bf16_serves_the_heldout_digits(self):
        if self.isa not in NATIVE_BF16_ISAS:
            self.skipTest(f"this CPU has no native bfloat16 (oneDNN ISA {self.isa}): BF16 is "
                          "refused here, which the test above checks")
        with open(HELDOUT) as f:
            heldout = json.load(f)
        digits = load_digits()
        images = [pb.Image(encoded=digit_png(digits.images[i])) for i in heldout["indices"]]
        server = start([("fp32", "FP32"), ("bf16", "BF16")])
        try:
            info = server.stub.GetModel(pb.GetModelRequest(name="bf16"), timeout=10)
            self.assertEqual(info.compute_dtype, "bfloat16")
            self.assertEqual(info.compute_dtype_reason, "")
            self.assertEqual(
                server.stub.GetModel(pb.GetModelRequest(name="fp32"), timeout=10).compute_dtype,
                "float32")
            top1, probs = {}, {}
            for model in ("fp32", "bf16"):
                top1[model], probs[model] = [], []
                for start_index in range(0, len(images), 64):
                    reply = server.stub.Classify(
                        pb.ClassifyRequest(model=model, images=images[start_index:start_index + 64],
                                           top_k=10), timeout=120)
                    for r in reply.results:
                        top1[model].append(r.classes[0].index)
                        p = np.zeros(10)
                        for c in r.classes:
                            p[c.index] = c.score
                        probs[model].append(p)
        finally:
            self.assertEqual(server.stop(), 0)
        # float32 is the recorded model exactly (digits_test.py); bfloat16 is measured against it.
        self.assertEqual(top1["fp32"], heldout["predictions"])
        n = len(images)
        agree = sum(a == b for a, b in zip(top1["fp32"], top1["bf16"]))
        correct = {m: sum(p == y for p, y in zip(top1[m], heldout["labels"])) for m in top1}
        a, b = np.array(probs["fp32"]), np.array(probs["bf16"])
        cosine = float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) /
                              np.linalg.norm(b, axis=1)))
        print(f"digits, bfloat16 blocks ({self.isa}): top-1 agreement with float32 {agree}/{n}; "
              f"held-out accuracy {correct['bf16']}/{n} (float32 {correct['fp32']}/{n}); "
              f"lowest cosine of probabilities {cosine:.6f}; largest probability difference "
              f"{np.abs(a - b).max():.2e}", file=sys.stderr)
        # Bounds far from what bfloat16 gives (README) and far below what a wrong kernel would.
        self.assertGreaterEqual(agree, n - max(2, n // 100))
        self.assertGreaterEqual(correct["bf16"], correct["fp32"] - max(2, n // 100))
        self.assertGreater(cosine, 0.999)



@unittest.skipIf(FAST_PATH, "this build has the oneDNN fast path: ComputeDtypeTest runs instead")
class WithoutTheFastPathTest(unittest.TestCase):
    """A build without the fast path (CONVNEXT_ONEDNN=OFF, every LibTorch 2.x build) has no
    bfloat16 blocks on the CPU: BF16 is a start-up error that says so, AUTO serves float32 and
    says why."""

    def test_bf16_is_a_startup_error_and_auto_serves_float32(self):
        r = failed_start(config_text([("digits", "BF16")]))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("model 'digits' version 1: ", r.stderr)
        self.assertIn("this build has none (CONVNEXT_ONEDNN=OFF)", r.stderr)
        server = start([("digits", "AUTO")])
        try:
            info = server.stub.GetModel(pb.GetModelRequest(), timeout=10)
            self.assertEqual(info.compute_dtype, "float32")
            self.assertFalse(info.cpu_fast_path)
            self.assertIn("fast path only", info.compute_dtype_reason)
            self.assertEqual(classify_one_digit(server), 1)
        finally:
            self.assertEqual(server.stop(), 0)


@unittest.skipIf(os.environ.get("CONVNEXT_TEST_DEVICE", "cpu").startswith("cuda"),
                 "a CUDA device is there to use")
class CudaDeviceWithoutOneTest(unittest.TestCase):
    """A model configured for a CUDA device on a machine or build without one fails the start
    with the reason, whichever compute dtype it asks for."""

    def test_cuda_without_a_usable_device_is_a_clear_startup_error(self):
        for dtype in ("FP16", "BF16", "AUTO", "TF32"):
            text = config_text([("digits", dtype)]).replace(
                "compute_dtype:", 'device: "cuda" compute_dtype:')
            r = failed_start(text)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("model 'digits' version 1: ", r.stderr)
            self.assertRegex(r.stderr, r"device 'cuda': (this build has no CUDA|no CUDA device "
                             r"is visible)", dtype)

class Tf32OffCudaTest(unittest.TestCase):
    """TF32 (float32 with TensorFloat-32) is for CUDA devices: on the CPU it is a config error,
    not silently float32."""

    def test_tf32_on_the_cpu_is_a_startup_error(self):
        r = failed_start(config_text([("digits", "TF32")]))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("model 'digits': compute_dtype TF32 (TensorFloat-32) runs on a CUDA device "
                      "only", r.stderr)


if __name__ == "__main__":
    unittest.main()
