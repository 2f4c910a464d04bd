"""End-to-end tests of the `convnext` CLI against a real convnext-server on loopback: output
formats, exit codes, .npy files read back with numpy, bench counts, and one error per failure.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import BIN, DATA, Server, pb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = [os.path.join(ROOT, "samples", n) for n in
          ("digit_3_heldout_23.png", "digit_7_heldout_44.png", "digit_9_heldout_73.png")]


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--config", os.path.join(ROOT, "default_model", "server.textproto"),
                            "--model", f"custom={os.path.join(DATA, 'custom.safetensors')}")
        cls.target = f"--target=127.0.0.1:{cls.server.port}"

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def cli(self, *args):
        return subprocess.run([os.path.join(BIN, "convnext"), *args], capture_output=True,
                              text=True, timeout=120)

    def test_classify_table_and_json(self):
        r = self.cli("classify", *DIGITS, "--top_k", "2", self.target)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["file", "rank", "index", "label", "score"])
        self.assertEqual(len(lines), 1 + 3 * 2)
        for digit, line in zip("379", lines[1::2]):
            self.assertRegex(line, rf"\s1\s+{digit}\s+digit {digit}\s+0\.\d{{4}}$")
        r = self.cli("classify", DIGITS[0], "--json", self.target)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["model"], "digits")
        self.assertEqual(out["results"][0]["classes"][0]["label"], "digit 3")
        self.assertEqual(len(out["results"][0]["classes"]), 5)

    def test_embed_writes_npy_files_numpy_reads(self):
        with tempfile.TemporaryDirectory() as out:
            r = self.cli("embed", DIGITS[1], "--stages", "1,2,3,4", "--normalize", "--out", out,
                         self.target)
            self.assertEqual(r.returncode, 0, r.stderr)
            emb = np.load(os.path.join(out, "digit_7_heldout_44.embedding.npy"))
            self.assertEqual(emb.shape, (128,))
            self.assertAlmostEqual(float(np.linalg.norm(emb)), 1.0, places=5)
            shapes = [np.load(os.path.join(out, f"digit_7_heldout_44.stage{s}.npy")).shape
                      for s in range(1, 5)]
            self.assertEqual(shapes, [(16, 8, 8), (32, 4, 4), (64, 2, 2), (128, 1, 1)])
            # The same values the API returns.
            with open(DIGITS[1], "rb") as f:
                reply = self.server.stub.Embed(pb.EmbedRequest(
                    images=[pb.Image(encoded=f.read())], stages=[3]), timeout=60)
            api = np.frombuffer(reply.results[0].stages[0].data, "<f4").reshape(64, 2, 2)
            np.testing.assert_array_equal(
                np.load(os.path.join(out, "digit_7_heldout_44.stage3.npy")), api)

    def test_embed_boxes_writes_region_features(self):
        with tempfile.TemporaryDirectory() as out:
            r = self.cli("embed", DIGITS[1], "--keep_size", "--boxes", "0,0,8,8;1.5,0.5,5,7",
                         "--region_stages", "2,4", "--region_size", "2", "--out", out,
                         self.target)
            self.assertEqual(r.returncode, 0, r.stderr)
            s2 = np.load(os.path.join(out, "digit_7_heldout_44.regions.stage2.npy"))
            s4 = np.load(os.path.join(out, "digit_7_heldout_44.regions.stage4.npy"))
            self.assertEqual((s2.shape, s4.shape), ((2, 32, 2, 2), (2, 128, 2, 2)))
            with open(DIGITS[1], "rb") as f:
                reply = self.server.stub.Embed(pb.EmbedRequest(
                    images=[pb.Image(encoded=f.read())], resize=pb.KEEP_SIZE,
                    regions=[pb.ImageRegions(boxes=[pb.Box(x1=1.5, y1=0.5, x2=5, y2=7)])],
                    region_pooling=pb.RegionPooling(stages=[2], output_size=2)), timeout=60)
            api = np.frombuffer(reply.results[0].regions[0].data, "<f4").reshape(1, 32, 2, 2)
            np.testing.assert_array_equal(s2[1:], api)
            r = self.cli("embed", DIGITS[1], "--boxes", "0,0,32", "--out", out, self.target)
            self.assertEqual(r.returncode, 2)
            self.assertIn("bad box", r.stderr)
            r = self.cli("embed", DIGITS[1], "--boxes", "0,0,99,32", "--out", out, self.target)
            self.assertEqual(r.returncode, 1)
            self.assertIn("not inside", r.stderr)

    def test_models_and_health(self):
        r = self.cli("models", self.target)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("(default)", r.stdout)
        models = json.loads(self.cli("models", "--json", self.target).stdout)
        self.assertEqual(sorted(m["name"] for m in models), ["custom", "digits"])
        self.assertEqual([m["devices"] for m in models], [["cpu"], ["cpu"]])
        r = self.cli("health", self.target)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"))

    def test_bench_counts_every_request(self):
        r = self.cli("bench", *DIGITS, "--concurrency", "4", "--requests", "60", "--json",
                     self.target)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["calls"], 60)
        self.assertEqual(out["ok"], 60)
        self.assertEqual(out["codes"], {"OK": 60})
        self.assertGreater(out["latency_ms"]["p50"], 0)
        self.assertGreater(out["server_us_p50"]["compute"], 0)

    def assert_fails(self, code, message, *args):
        r = self.cli(*args)
        self.assertEqual(r.returncode, code, r.stdout + r.stderr)
        self.assertIn(message, r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertNotIn("Traceback", r.stderr)

    def test_errors_are_one_line_with_documented_exit_codes(self):
        self.assert_fails(4, "cannot reach 127.0.0.1:1", "health", "--target=127.0.0.1:1",
                          "--retries=0")
        self.assert_fails(1, "NOT_FOUND: no model named 'nope'", "classify", DIGITS[0],
                          "--model", "nope", self.target)
        self.assert_fails(1, "INVALID_ARGUMENT: image 0: not an image", "classify",
                          os.path.join(ROOT, "README.md"), self.target)
        self.assert_fails(3, "no such file", "classify", "/nonexistent.png", self.target)
        self.assert_fails(3, "is a directory", "classify", ROOT, self.target)
        self.assert_fails(2, "unknown command 'frobnicate'", "frobnicate", self.target)
        self.assert_fails(2, "bench needs", "bench", DIGITS[0], self.target)


if __name__ == "__main__":
    unittest.main()
