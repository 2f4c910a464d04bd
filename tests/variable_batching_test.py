"""Variable-size batching (batching.max_batch_pixels) end to end over gRPC, against torchvision:
concurrent KEEP_SIZE Embed calls of real photos and tensors of different sizes share batches
(the server's batch-size histogram shows it, within the pixel budget) and each gets, within
1e-4 of its scale, torchvision's answer for its image alone at its own size: the embedding,
stage maps of its own size, and classes. (Stage 2 and 4 maps: stage 1 of a 512 x 512 image is
over the Python client's default 4 MB receive limit.)

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN.
"""
import concurrent.futures
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import (DATA, Server, keep_size_input, pb, photo_path,  # noqa: E402
                             tiny_reference)

BUDGET = 3 * 512 * 512  # Three images of the 512 x 512 bucket a batch.


def decode(t):
    return np.frombuffer(t.data, "<f4").reshape(list(t.shape))


class VariableBatchingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        torch.set_num_threads(2)
        cls.model = tiny_reference()
        cls.server = Server("--model", f"tiny={os.path.join(DATA, 'tiny.safetensors')}",
                            "--max_batch_size", "8", "--max_queue_delay_us", "2000000",
                            "--max_batch_pixels", str(BUDGET))
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def reference(self, x):
        """torchvision on x alone: (softmax, embedding after the final norm, stage maps)."""
        import torch
        with torch.no_grad():
            h = torch.from_numpy(x)
            maps = []
            for i, layer in enumerate(self.model.features):
                h = layer(h)
                if i % 2 == 1:
                    maps.append(h[0].numpy())
            pooled = self.model.classifier[0](self.model.avgpool(h))  # LayerNorm2d, then flatten.
            embedding = pooled.flatten(1)[0].numpy()
            probs = torch.softmax(self.model.classifier[2](pooled.flatten(1)), 1)[0].numpy()
        return probs, embedding, maps

    def close(self, got, want, what):
        self.assertEqual(got.shape, want.shape, what)
        scale = max(1.0, float(np.abs(want).max()))
        self.assertLessEqual(float(np.abs(got - want).max()), 1e-4 * scale, what)

    def batch_sizes(self):
        """{batch size: count} from the metrics page's histogram buckets (cumulative)."""
        metrics = self.server.metrics()
        buckets = {}
        for (name, labels), value in metrics.items():
            if name == "convnext_batch_size_bucket" and ("model", "tiny") in labels:
                le = dict(labels)["le"]
                buckets[float("inf") if le == "+Inf" else float(le)] = value
        return buckets

    def test_mixed_sizes_share_batches_and_each_gets_its_own_answer(self):
        # The 512 x 512 bucket (sides 480 and 512) gets astronaut (512 x 512) and three tensors,
        # no two of one size: a batch of several is a batch of sizes. Coffee (400 x 600 ->
        # 416 x 608, bucket 448 x 640), chelsea (300 x 451 -> 320 x 480, bucket 320 x 512) and a
        # 448 x 512 tensor (bucket 448 x 512) have buckets of their own.
        rng = np.random.default_rng(5)
        cases = [("photo", "astronaut.png"), ("tensor", (480, 512)), ("tensor", (512, 480)),
                 ("photo", "coffee.png"), ("tensor", (480, 480)), ("photo", "chelsea.png"),
                 ("tensor", (448, 512))]
        inputs, requests = [], []
        for kind, what in cases:
            if kind == "photo":
                x = keep_size_input(what)
                with open(photo_path(what), "rb") as f:
                    image = pb.Image(encoded=f.read())
            else:
                x = rng.standard_normal((1, 3) + what).astype(np.float32)
                image = pb.Image(tensor=pb.Tensor(shape=list(x.shape[1:]),
                                                  data=x[0].astype("<f4").tobytes()))
            inputs.append(x)
            requests.append(pb.EmbedRequest(images=[image], include_embedding=True,
                                            stages=[2, 4], resize=pb.KEEP_SIZE))
        info = self.stub.GetModel(pb.GetModelRequest(name="tiny"), timeout=60)
        self.assertEqual(info.batching.max_batch_pixels, BUDGET)
        before = self.batch_sizes()
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            replies = list(pool.map(lambda r: self.stub.Embed(r, timeout=300), requests))
        after = self.batch_sizes()
        # The 512 x 512 bucket's four calls: a full batch of three (closed at once: the queue
        # delay is long), then one; the others alone. None over three.
        grew = {le: after.get(le, 0) - before.get(le, 0) for le in after}
        batches = grew[float("inf")]
        self.assertGreater(batches - grew[2.0], 0, grew)  # A batch of three sizes.
        self.assertEqual(batches - grew[3.0], 0, grew)  # None of more than three.
        self.assertLess(batches, len(requests), grew)
        for i, (reply, x) in enumerate(zip(replies, inputs)):
            _, embedding, maps = self.reference(x)
            result = reply.results[0]
            self.close(decode(result.embedding), embedding, f"call {i} embedding")
            self.close(decode(result.stages[0]), maps[1], f"call {i} stage 2")
            self.close(decode(result.stages[1]), maps[3], f"call {i} stage 4")

    def test_classify_tensors_of_mixed_sizes_in_one_call(self):
        rng = np.random.default_rng(6)
        # One bucket (512 x 512): one padded batch of three sizes.
        xs = [rng.standard_normal((1, 3, h, w)).astype(np.float32)
              for h, w in [(480, 512), (512, 480), (480, 480)]]
        reply = self.stub.Classify(pb.ClassifyRequest(images=[
            pb.Image(tensor=pb.Tensor(shape=list(x.shape[1:]), data=x[0].tobytes()))
            for x in xs], top_k=5), timeout=300)
        for x, result in zip(xs, reply.results):
            probs, _, _ = self.reference(x)
            for c in result.classes:
                self.assertAlmostEqual(c.score, probs[c.index], delta=1e-5)
            self.assertEqual(result.classes[0].index, int(np.argmax(probs)))


if __name__ == "__main__":
    unittest.main()
