"""End-to-end: every checkpoint layout and container loads through build/bin/convnext-run and
matches torchvision within 1e-4; broken and hostile checkpoints fail with specific messages.

The files come from tests/python/checkpoint_formats.py (run by the reference_data ctest fixture):
one random-weight custom ConvNeXt written in every form.
"""
import os
import subprocess
import tempfile
import unittest

import numpy as np

BIN = os.path.join(os.environ.get("CONVNEXT_BIN", "build/bin"), "convnext-run")
DATA = os.environ.get("CONVNEXT_TESTDATA", "build/testdata")
FORMATS = os.path.join(DATA, "formats")
TOLERANCE = 1e-4


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300)


class CheckpointFormatsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.out = os.path.join(self.tmp.name, "out.npy")

    def load_and_compare(self, name, reference, layout, fmt):
        r = run("--checkpoint", os.path.join(FORMATS, name), "--input",
                os.path.join(DATA, "custom.input.npy"), "--output", self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"({layout} layout, {fmt}), 163850 parameters, 10 classes", r.stdout)
        got = np.load(self.out)
        want = np.load(reference)
        self.assertEqual(got.shape, want.shape)
        self.assertLessEqual(np.abs(got - want).max(), TOLERANCE, name)
        return r

    def test_every_layout_and_container_matches_torchvision(self):
        reference = os.path.join(DATA, "custom.logits.npy")
        cases = [
            ("fair.pth", "fair", "torch.save zip"),  # {'model', 'optimizer', 'epoch', 'args'}
            ("fair_bare.pth", "fair", "torch.save zip"),
            ("fair.safetensors", "fair", "safetensors"),
            ("torchvision.pth", "torchvision", "torch.save zip"),
            ("module_prefixed.pth", "torchvision", "torch.save zip"),
            ("timm.pth", "timm", "torch.save zip"),
            ("timm_conv_mlp.safetensors", "timm", "safetensors"),
        ]
        for name, layout, fmt in cases:
            with self.subTest(name=name):
                self.load_and_compare(name, reference, layout, fmt)

    def test_reduced_precision_weights(self):
        for name, ref, layout, fmt in [
                ("fp16.pth", "fp16.logits.npy", "fair", "torch.save zip"),
                ("bf16.pth", "bf16.logits.npy", "torchvision", "torch.save zip"),
                ("bf16.safetensors", "bf16.logits.npy", "torchvision", "safetensors")]:
            with self.subTest(name=name):
                self.load_and_compare(name, os.path.join(FORMATS, ref), layout, fmt)

    def test_hugging_face_reads_config_json(self):
        # config.json sets layer_norm_eps = 0.5 for the final LayerNorm, and id2label.
        for name, fmt in [("hf_bin/pytorch_model.bin", "torch.save zip"),
                          ("hf_safetensors/model.safetensors", "safetensors")]:
            with self.subTest(name=name):
                r = self.load_and_compare(name, os.path.join(FORMATS, "hf.logits.npy"),
                                          "huggingface", fmt)
                self.assertRegex(r.stdout, r"image 0 top-5: (\d) class_\1 ")

    def test_detection_backbone_gives_normed_stage_outputs(self):
        r = run("--checkpoint", os.path.join(FORMATS, "mmdet_backbone.pth"), "--input",
                os.path.join(DATA, "custom.features_input.npy"), "--output", self.out,
                "--features")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("dropped 2 others", r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "out.embedding.npy")))
        for s in range(1, 5):
            got = np.load(os.path.join(self.tmp.name, f"out.stage{s}.npy"))
            want = np.load(os.path.join(FORMATS, f"mmdet.stage{s}.npy"))
            self.assertEqual(got.shape, want.shape)
            self.assertLessEqual(np.abs(got - want).max(), TOLERANCE)
        # A headless model cannot classify.
        r = run("--checkpoint", os.path.join(FORMATS, "mmdet_backbone.pth"), "--input",
                os.path.join(DATA, "custom.input.npy"), "--output", self.out)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no classification head", r.stderr)

    def test_bad_checkpoints_fail_with_specific_messages(self):
        cases = [
            ("truncated.pth", "is a damaged or truncated zip file"),
            ("corrupt_pickle.pth", "data.pkl: malformed pickle at byte"),
            ("legacy.pth", "is a legacy (pre-1.6, non-zip) torch.save file"),
            ("missing_tensor.pth", "missing tensor stages.1.0.norm.bias: the model expects "
                                   "shape [32]"),
            ("wrong_shape.pth", "tensor stages.0.1.dwconv.weight has shape [16, 1, 5, 5], the "
                                "model expects [16, 1, 7, 7]"),
            ("no_state_dict.pth", "holds no state dict"),
            ("empty.pth", "is an empty file"),
        ]
        for name, message in cases:
            with self.subTest(name=name):
                r = run("--checkpoint", os.path.join(FORMATS, name), "--input",
                        os.path.join(DATA, "custom.input.npy"), "--output", self.out)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn(message, r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

    def test_hostile_pickles_run_nothing_and_load_nothing(self):
        marker = os.path.join(FORMATS, "PWNED")
        for name, global_name in [("hostile_os_system.pth", "posix.system"),
                                  ("hostile_eval.pth", ".eval")]:
            with self.subTest(name=name):
                r = run("--checkpoint", os.path.join(FORMATS, name), "--input",
                        os.path.join(DATA, "custom.input.npy"), "--output", self.out)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn("refusing to load", r.stderr)
                self.assertIn(global_name, r.stderr)
                self.assertFalse(os.path.exists(self.out))
                self.assertFalse(os.path.exists(marker))


if __name__ == "__main__":
    unittest.main()
