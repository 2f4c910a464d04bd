"""The ConvNeXt family against timm: every ConvNeXt V2 variant (atto..huge, GRN blocks) and timm's
small V1 variants (atto..nano) load from timm's safetensors and match timm's logits within 1e-4 of
their scale; a V2 model's stage maps match timm's; FAIR's and Hugging Face's V2 layouts load to the
same answers; and a V2 model served over gRPC answers the Python client and the C++ CLI as timm.

timm comes from PyPI (pinned in tests/requirements-timm.txt, in build/venv-timm made by
scripts/timm-venv.sh) and runs on Debian's torch. Weights are random: timm's own initialisation,
then layer scales, GRN parameters, biases and norm weights drawn away from their neutral values,
so that a block that is skipped or a GRN computed wrongly changes the answer. convnext-run takes
the CPU fast path (oneDNN, GRN between its matrix products); the ATen path's GRN is held to it by
model/onednn_stage_test.cc.

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
from convnext_reference import write_safetensors  # noqa: E402
from server_e2e_test import BIN, FAST_PATH, Server, pb, photo_path  # noqa: E402

import torch  # noqa: E402
import timm  # noqa: E402

TOLERANCE = 1e-4
V1_SMALL = ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano"]
V2 = ["convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano",
      "convnextv2_tiny", "convnextv2_base", "convnextv2_large", "convnextv2_huge"]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def timm_model(name, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if ".grn.weight" in key:  # timm initialises GRN as the identity (zeros).
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif key.endswith(".gamma"):  # V1 layer scale, 1e-6 in timm.
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.25)
            elif key.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif p.dim() == 1:  # LayerNorm weight.
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def stage_maps(model, x):
    with torch.no_grad():
        h = model.stem(x)
        maps = []
        for stage in model.stages:
            h = stage(h)
            maps.append(h.numpy())
    return maps


def fair_v2_state(model):
    """timm's ConvNeXt V2 keys in the layout of FAIR's ConvNeXt-V2 repository (convnextv2.py)."""
    out = {}
    for key, t in model.state_dict().items():
        p = key.split(".")
        if p[0] == "stem":
            name = f"downsample_layers.0.{p[1]}.{p[2]}"
        elif p[0] == "stages" and p[2] == "downsample":
            name = f"downsample_layers.{p[1]}.{p[3]}.{p[4]}"
        elif p[0] == "stages":
            part = {"conv_dw": "dwconv", "norm": "norm", "mlp.fc1": "pwconv1",
                    "mlp.fc2": "pwconv2", "mlp.grn": "grn"}[".".join(p[4:-1])]
            leaf = {"grn": {"weight": "gamma", "bias": "beta"}}.get(part, {}).get(p[-1], p[-1])
            name = f"stages.{p[1]}.{p[3]}.{part}.{leaf}"
            if part.startswith("pwconv") and t.dim() == 4:
                t = t.reshape(t.shape[0], t.shape[1])  # FAIR's pointwise layers are Linear.
            elif part == "grn":
                t = t.reshape(1, 1, 1, -1)
        elif p[0] == "head":
            name = {"norm": "norm", "fc": "head"}[p[1]] + "." + p[2]
        else:
            raise AssertionError(key)
        out[name] = t.clone()
    return out


def hugging_face_v2_state(model):
    """The same weights as transformers' ConvNextV2ForImageClassification names them."""
    out = {}
    for key, t in fair_v2_state(model).items():
        p = key.split(".")
        if p[0] == "downsample_layers" and p[1] == "0":
            name = "convnextv2.embeddings." + ("patch_embeddings" if p[2] == "0" else "layernorm")
            name += "." + p[3]
        elif p[0] == "downsample_layers":
            name = f"convnextv2.encoder.stages.{p[1]}.downsampling_layer.{p[2]}.{p[3]}"
        elif p[0] == "stages":
            part = {"dwconv": "dwconv", "norm": "layernorm", "pwconv1": "pwconv1",
                    "pwconv2": "pwconv2", "grn": "grn"}[p[3]]
            leaf = {"gamma": "weight", "beta": "bias"}.get(p[4], p[4]) if part == "grn" else p[4]
            name = f"convnextv2.encoder.stages.{p[1]}.layers.{p[2]}.{part}.{leaf}"
        elif p[0] == "norm":
            name = "convnextv2.layernorm." + p[1]
        else:
            name = "classifier." + p[1]
        out[name] = t
    return out


def run(*args):
    return subprocess.run([os.path.join(BIN, "convnext-run"), *args], capture_output=True,
                          text=True, timeout=600)


def assert_close(test, got, want, what):
    test.assertEqual(got.shape, want.shape, what)
    scale = max(1.0, float(np.abs(want).max()))
    test.assertLessEqual(float(np.abs(got - want).max()), TOLERANCE * scale, what)


class FamilyTest(unittest.TestCase):
    def setUp(self):
        torch.set_num_threads(2)
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def check_logits(self, checkpoint, model, x, variant, layout, fmt, *extra):
        np.save(self.path("x.npy"), x.numpy())
        r = run("--checkpoint", checkpoint, "--input", self.path("x.npy"),
                "--output", self.path("out.npy"), *extra)
        self.assertEqual(r.returncode, 0, r.stderr)
        parameters = sum(p.numel() for p in model.parameters())
        self.assertIn(f"model: {variant} ({layout} layout, {fmt}), {parameters} parameters, "
                      "1000 classes", r.stdout)
        with torch.no_grad():
            want = model(x).numpy()
        assert_close(self, np.load(self.path("out.npy")), want, f"{variant} {layout}")
        return r

    def test_every_variant_matches_timm(self):
        # Two images at 64 x 64: all 32 px strides, and GRN's per-image norms kept apart.
        # CONVNEXT_FAMILY_VARIANTS (a comma-separated subset) shortens the sanitizer build's run.
        only = [v for v in os.environ.get("CONVNEXT_FAMILY_VARIANTS", "").split(",") if v]
        for i, name in enumerate(V1_SMALL + V2):
            if only and name not in only:
                continue
            with self.subTest(variant=name):
                model = timm_model(name, seed=i)
                checkpoint = self.path(name + ".safetensors")
                write_safetensors(checkpoint, model.state_dict())
                x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i))
                self.check_logits(checkpoint, model, x, name, "timm", "safetensors")
                os.remove(checkpoint)
                del model

    def test_v2_stage_maps_and_every_layout(self):
        model = timm_model("convnextv2_atto", seed=20)
        x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(20))
        # Stage maps of a non-square image.
        write_safetensors(self.path("timm.safetensors"), model.state_dict())
        np.save(self.path("x.npy"), x.numpy())
        r = run("--checkpoint", self.path("timm.safetensors"), "--input", self.path("x.npy"),
                "--output", self.path("out.npy"), "--features")
        self.assertEqual(r.returncode, 0, r.stderr)
        for s, want in enumerate(stage_maps(model, x), start=1):
            assert_close(self, np.load(self.path(f"out.stage{s}.npy")), want, f"stage {s}")
        # FAIR's layout (GRN as grn.gamma/grn.beta of shape [1, 1, 1, 4C]) in a training
        # checkpoint, and Hugging Face's (convnextv2. prefix, config.json beside it).
        torch.save({"model": fair_v2_state(model), "epoch": 3}, self.path("fair.pth"))
        self.check_logits(self.path("fair.pth"), model, x, "convnextv2_atto", "fair",
                          "torch.save zip")
        os.makedirs(self.path("hf"))
        write_safetensors(self.path("hf/model.safetensors"), hugging_face_v2_state(model))
        with open(self.path("hf/config.json"), "w") as f:
            json.dump({"model_type": "convnextv2", "layer_norm_eps": 1e-6,
                       "hidden_sizes": [40, 80, 160, 320], "depths": [2, 2, 6, 2]}, f)
        self.check_logits(self.path("hf/model.safetensors"), model, x, "convnextv2_atto",
                          "huggingface", "safetensors")
        # A V1 checkpoint is not mistaken for a V2 one of the same sizes, nor the reverse.
        write_safetensors(self.path("v1.safetensors"), timm_model("convnext_atto").state_dict())
        r = run("--checkpoint", self.path("v1.safetensors"), "--variant", "convnextv2_atto",
                "--input", self.path("x.npy"), "--output", self.path("out.npy"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("grn", r.stderr)

    def test_bfloat16_v2_blocks_agree_with_float32_or_are_refused(self):
        """V2 blocks run on the fast path, GRN included: in bfloat16 too where the CPU has native
        bfloat16 (close to float32, not equal), else refused with the reason."""
        model = timm_model("convnextv2_atto", seed=3)
        write_safetensors(self.path("v2.safetensors"), model.state_dict())
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        np.save(self.path("x.npy"), x.numpy())
        r = run("--checkpoint", self.path("v2.safetensors"), "--input", self.path("x.npy"),
                "--output", self.path("bf16.npy"), "--bf16")
        if r.returncode != 0:
            # Refused: no native bfloat16 on this CPU, or no fast path in this build.
            self.assertIn("native bfloat16" if FAST_PATH else "this build has none (CONVNEXT_ONEDNN=OFF)",
                          r.stderr)
            return
        with torch.no_grad():
            want = model(x).numpy()
        got = np.load(self.path("bf16.npy"))
        cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        self.assertGreater(cosine, 0.999)
        self.assertGreater(float(np.abs(got - want).max()), 1e-6)  # Really bfloat16.


class FamilyServedTest(unittest.TestCase):
    """A ConvNeXt V2 model through convnext-server: Classify and Embed from Python's gRPC client,
    Embed from the C++ client (the convnext CLI), against timm on the photo as torchvision's
    transform prepares it (the server's preprocessing is PIL-exact)."""

    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = timm_model("convnextv2_femto", seed=7)
        checkpoint = os.path.join(cls.tmp.name, "v2.safetensors")
        write_safetensors(checkpoint, cls.model.state_dict())
        cls.server = Server("--model", f"v2={checkpoint}")
        cls.stub = cls.server.stub
        from PIL import Image
        from torchvision import transforms
        cls.photo = photo_path("chelsea.png")
        tf = transforms.Compose([
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        cls.x = tf(Image.open(cls.photo).convert("RGB")).unsqueeze(0)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def image(self):
        with open(self.photo, "rb") as f:
            return pb.Image(encoded=f.read())

    def test_classify_and_embed_from_python(self):
        with torch.no_grad():
            probs = torch.softmax(self.model(self.x), 1)[0].numpy()
            pooled = self.model.forward_head(self.model.forward_features(self.x),
                                             pre_logits=True)[0].numpy()
        reply = self.stub.Classify(pb.ClassifyRequest(model="v2", images=[self.image()], top_k=5),
                                   timeout=120)
        scores = reply.results[0].classes
        self.assertEqual(len(scores), 5)
        fifth = np.sort(probs)[-5]
        for s in scores:
            self.assertAlmostEqual(s.score, probs[s.index], delta=TOLERANCE)
            self.assertGreaterEqual(s.score, fifth - TOLERANCE)
        reply = self.stub.Embed(pb.EmbedRequest(model="v2", images=[self.image()],
                                                include_embedding=True, stages=[2]),
                                timeout=120)
        e = reply.results[0]
        got = np.frombuffer(e.embedding.data, "<f4").reshape(list(e.embedding.shape))
        assert_close(self, got, pooled, "embedding")
        got = np.frombuffer(e.stages[0].data, "<f4").reshape(list(e.stages[0].shape))
        assert_close(self, got, stage_maps(self.model, self.x)[1][0], "stage 2")

    def test_embed_from_the_cpp_client(self):
        out = os.path.join(self.tmp.name, "cli")
        r = subprocess.run([os.path.join(BIN, "convnext"), "embed", self.photo,
                            "--target", f"127.0.0.1:{self.server.port}", "--model", "v2",
                            "--stages", "4", "--out", out],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        stem = os.path.splitext(os.path.basename(self.photo))[0]
        got = np.load(os.path.join(out, f"{stem}.stage4.npy"))
        assert_close(self, got, stage_maps(self.model, self.x)[3][0], "stage 4")


if __name__ == "__main__":
    unittest.main()
