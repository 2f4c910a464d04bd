"""End-to-end tests of build/bin/convnext-run against the torchvision reference data.

Run by ctest (tests/CMakeLists.txt), which sets CONVNEXT_BIN and CONVNEXT_TESTDATA.
"""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
import checkpoint_bombs  # noqa: E402

BIN = os.path.join(os.environ.get("CONVNEXT_BIN", "build/bin"), "convnext-run")
DATA = os.environ.get("CONVNEXT_TESTDATA", "build/testdata")
TOLERANCE = 1e-4


def data(name):
    return os.path.join(DATA, name)


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300)


class ConvNeXtRunTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def out(self, name):
        return os.path.join(self.tmp.name, name)

    def test_logits_match_torchvision(self):
        r = run("--checkpoint", data("tiny.safetensors"), "--variant", "convnext_tiny",
                "--input", data("tiny.input.npy"), "--output", self.out("logits.npy"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("convnext_tiny (torchvision layout, safetensors), 28589128 parameters",
                      r.stdout)
        got = np.load(self.out("logits.npy"))
        want = np.load(data("tiny.logits.npy"))
        self.assertEqual(got.shape, (2, 1000))
        self.assertLessEqual(np.abs(got - want).max(), TOLERANCE)
        # The printed top-5 of image 0 is the reference's.
        top5 = [int(i) for i in np.argsort(-want[0])[:5]]
        line = next(l for l in r.stdout.splitlines() if l.startswith("image 0 top-5:"))
        self.assertEqual([int(tok) for tok in line.split()[3::2]], top5)

    def test_features_match_torchvision(self):
        r = run("--checkpoint", data("custom.safetensors"), "--input",
                data("custom.features_input.npy"), "--output", self.out("f.npy"), "--features")
        self.assertEqual(r.returncode, 0, r.stderr)
        emb = np.load(self.out("f.embedding.npy"))
        self.assertLessEqual(np.abs(emb - np.load(data("custom.embedding.npy"))).max(), TOLERANCE)
        for s in range(1, 5):
            got = np.load(self.out(f"f.stage{s}.npy"))
            want = np.load(data(f"custom.stage{s}.npy"))
            self.assertEqual(got.shape, want.shape)
            self.assertLessEqual(np.abs(got - want).max(), TOLERANCE)

    def test_image_input_gets_the_eval_transform(self):
        # A 300x200 RGB gradient: the transform makes a 1x3x224x224 input, so 10 logits come out.
        h, w = 200, 300
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(self.out("gradient.png"))
        r = run("--checkpoint", data("custom.safetensors"), self.out("gradient.png"),
                "--output", self.out("logits.npy"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(np.load(self.out("logits.npy")).shape, (1, 10))

    def assert_fails(self, args, code, message):
        r = run(*args)
        self.assertEqual(r.returncode, code, r.stdout + r.stderr)
        self.assertIn(message, r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        self.assertLessEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

    def test_errors_are_one_line_with_exit_code_1(self):
        empty = self.out("empty.safetensors")
        open(empty, "wb").close()
        self.assert_fails(["--checkpoint", empty, "--input", data("tiny.input.npy")], 1,
                          "is an empty file")
        self.assert_fails(["--checkpoint", self.tmp.name, "--input", data("tiny.input.npy")], 1,
                          "is a directory")
        self.assert_fails(["--checkpoint", data("tiny.safetensors"), "--input",
                           data("tiny.safetensors")], 1, "is not a valid .npy file")
        self.assert_fails(["--checkpoint", data("custom.safetensors"), "--variant",
                           "convnext_tiny", "--input", data("custom.input.npy")], 1,
                          "convnext_tiny expects [96, 3, 4, 4]")
        self.assert_fails(["--checkpoint", data("custom.safetensors"), empty], 1,
                          "cannot decode image")

    def test_checkpoint_bombs_fail_with_one_line_and_bounded_memory(self):
        """Files that claim gigabytes of tensor or of pickle: refused before it is spent."""
        for path, message in checkpoint_bombs.write(self.tmp.name):
            with self.subTest(os.path.basename(path)):
                code, stderr, peak_mb = checkpoint_bombs.run_measured(
                    [BIN, "--checkpoint", path, "--max_checkpoint_bytes",
                     str(checkpoint_bombs.CAP_BYTES), "--input", data("tiny.input.npy")])
                print(f"\n{os.path.basename(path)}: exit {code}, peak RSS {peak_mb:.0f} MB")
                self.assertEqual(code, 1, stderr)
                self.assertIn(message, stderr)
                self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
                self.assertLess(peak_mb, 1024)

    def test_usage_errors_exit_2(self):
        self.assert_fails(["--input", data("tiny.input.npy")], 2, "usage:")
        self.assert_fails(["--checkpoint", data("tiny.safetensors")], 2, "usage:")


if __name__ == "__main__":
    unittest.main()
