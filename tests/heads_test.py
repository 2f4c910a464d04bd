"""One trunk, several heads (ModelConfig.head) end to end over gRPC, against torchvision.

A served model ("tiny", torchvision's convnext_tiny with the test data's random weights) declares
two heads trained on its frozen trunk: "pets" (37 classes, a labels file) and "flowers" (102
classes), each saved whole by torch.save as a torchvision state dict with its own final
LayerNorm and classifier. Concurrent Classify calls to the three names share one forward pass of
the trunk (the model's batch statistics show it) and each gets, within 1e-5, torchvision's
probabilities of its own checkpoint for its image alone; an Embed of a real photo through a head
gets that head's embedding (its own final norm). The heads are listed with their trunk and carry
their own labels and statistics.

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN.
"""
import concurrent.futures
import copy
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import (DATA, Server, keep_size_input, pb, photo_path,  # noqa: E402
                             tiny_reference)

HEADS = {"pets": 37, "flowers": 102}


def decode(t):
    return np.frombuffer(t.data, "<f4").reshape(list(t.shape))


def tensor_image(x):
    return pb.Image(tensor=pb.Tensor(shape=list(x.shape[1:]), data=x[0].astype("<f4").tobytes()))


class HeadsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        torch.set_num_threads(2)
        torch.manual_seed(3)
        cls.dir = tempfile.TemporaryDirectory()
        cls.models = {"tiny": tiny_reference()}
        heads = ""
        for name, classes in HEADS.items():
            model = copy.deepcopy(cls.models["tiny"])
            # A new final norm and classifier on the same trunk, as a linear probe or a fine-tuned
            # head would be.
            with torch.no_grad():
                model.classifier[0].weight.copy_(1 + 0.5 * torch.randn(768))
                model.classifier[0].bias.copy_(torch.randn(768))
            model.classifier[2] = torch.nn.Linear(768, classes)
            model.eval()
            cls.models[name] = model
            path = os.path.join(cls.dir.name, f"{name}.pth")
            torch.save(model.state_dict(), path)
            labels = ""
            if name == "pets":
                cls.pet_labels = [f"pet-{i}" for i in range(classes)]
                with open(os.path.join(cls.dir.name, "pets.txt"), "w") as f:
                    f.write("\n".join(cls.pet_labels) + "\n")
                labels = ' labels_file: "pets.txt"'
            heads += f' head {{ name: "{name}" checkpoint: "{name}.pth"{labels} }}'
        config = os.path.join(cls.dir.name, "server.pbtxt")
        with open(config, "w") as f:
            f.write(f'model {{ name: "tiny" checkpoint: "{os.path.join(DATA, "tiny.safetensors")}"'
                    ' batching { max_batch_size: 6 max_queue_delay_us: 3000000 }'
                    f'{heads} }}\n')
        cls.server = Server("--config", config)
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.dir.cleanup()

    def reference(self, name, x):
        """Checkpoint `name`'s torchvision model on x alone: (probabilities, embedding)."""
        import torch
        model = self.models[name]
        with torch.no_grad():
            pooled = model.classifier[0](model.avgpool(model.features(torch.from_numpy(x))))
            embedding = pooled.flatten(1)
            probs = torch.softmax(model.classifier[2](embedding), 1)
        return probs[0].numpy(), embedding[0].numpy()

    def test_calls_to_the_model_and_its_heads_share_one_trunk_pass(self):
        rng = np.random.default_rng(8)
        names = ["tiny", "pets", "flowers", "tiny", "pets", "flowers"]
        xs = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in names]
        before = self.stub.GetModel(pb.GetModelRequest(name="tiny"), timeout=60).stats
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            replies = list(pool.map(
                lambda c: self.stub.Classify(pb.ClassifyRequest(
                    model=c[0], images=[tensor_image(c[1])], top_k=5), timeout=300),
                zip(names, xs)))
        after = self.stub.GetModel(pb.GetModelRequest(name="tiny"), timeout=60).stats
        # One forward pass of six: the model's calls and both heads' went through one trunk pass.
        self.assertEqual(after.batches - before.batches, 1)
        self.assertEqual(after.batch_sizes[6] - before.batch_sizes[6], 1)
        for name, x, reply in zip(names, xs, replies):
            probs, _ = self.reference(name, x)
            self.assertEqual(reply.model, name)
            classes = reply.results[0].classes
            self.assertEqual([c.index for c in classes], list(np.argsort(-probs)[:5]), name)
            for c in classes:
                self.assertAlmostEqual(c.score, probs[c.index], delta=1e-5)
                if name == "pets":
                    self.assertEqual(c.label, self.pet_labels[c.index])
                else:
                    self.assertEqual(c.label, "")

    def test_embed_through_a_head_gives_its_own_embedding_of_a_photo(self):
        x = keep_size_input("chelsea.png")
        with open(photo_path("chelsea.png"), "rb") as f:
            image = pb.Image(encoded=f.read())
        for name in ["pets", "tiny"]:
            reply = self.stub.Embed(pb.EmbedRequest(model=name, images=[image],
                                                    include_embedding=True,
                                                    resize=pb.KEEP_SIZE), timeout=300)
            _, embedding = self.reference(name, x)
            got = decode(reply.results[0].embedding)
            scale = max(1.0, float(np.abs(embedding).max()))
            self.assertLessEqual(float(np.abs(got - embedding).max()), 1e-4 * scale, name)
        # The two embeddings lie in different spaces, and say so.
        pets = self.stub.GetModel(pb.GetModelRequest(name="pets"), timeout=60)
        tiny = self.stub.GetModel(pb.GetModelRequest(name="tiny"), timeout=60)
        self.assertNotEqual(pets.embedding_space, tiny.embedding_space)

    def test_heads_are_listed_with_their_trunk(self):
        listed = {m.name: m for m in self.stub.ListModels(pb.ListModelsRequest(), timeout=60).models}
        self.assertEqual(sorted(listed), ["flowers", "pets", "tiny"])
        self.assertEqual(list(listed["tiny"].heads), ["pets", "flowers"])
        for name, classes in HEADS.items():
            info = listed[name]
            self.assertEqual(info.trunk_model, "tiny")
            self.assertEqual(info.num_classes, classes)
            self.assertEqual(info.state, pb.READY)
            self.assertTrue(info.ready)
            self.assertEqual(info.version, listed["tiny"].version)
            self.assertEqual(info.checkpoint_format, "torch.save zip")
        self.assertTrue(listed["pets"].has_labels)
        self.assertFalse(listed["flowers"].has_labels)
        # A head's top_k is bounded by its own classes, not its trunk's.
        x = np.zeros((1, 3, 64, 64), np.float32)
        reply = self.stub.Classify(pb.ClassifyRequest(model="pets", images=[tensor_image(x)],
                                                      top_k=37), timeout=300)
        self.assertEqual(len(reply.results[0].classes), 37)
        import grpc
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Classify(pb.ClassifyRequest(model="pets", images=[tensor_image(x)],
                                                  top_k=38), timeout=300)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_a_head_over_the_open_inference_protocol(self):
        """OIP (HTTP/REST) finds a head by name with its own outputs and answers with its own
        classes, as our Classify does."""
        import json
        import urllib.request
        base = f"http://127.0.0.1:{self.server.http_port}/v2/models/pets"
        meta = json.loads(urllib.request.urlopen(base, timeout=60).read())
        self.assertEqual(meta["name"], "pets")
        outputs = {o["name"]: o for o in meta["outputs"]}
        self.assertEqual(outputs["probabilities"]["shape"], [-1, 37])
        x = np.random.default_rng(9).standard_normal((1, 3, 64, 64)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "TENSOR", "datatype": "FP32",
                                       "shape": list(x.shape), "data": x.ravel().tolist()}],
                           "outputs": [{"name": "probabilities"}]}).encode()
        reply = json.loads(urllib.request.urlopen(urllib.request.Request(
            base + "/infer", data=body, headers={"Content-Type": "application/json"}),
            timeout=300).read())
        self.assertEqual(reply["model_name"], "pets")
        got = np.array(reply["outputs"][0]["data"], np.float32)
        probs, _ = self.reference("pets", x)
        self.assertEqual(got.shape, (37,))
        self.assertLessEqual(float(np.abs(got - probs).max()), 1e-5)


if __name__ == "__main__":
    unittest.main()
