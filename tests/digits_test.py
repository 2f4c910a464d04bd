"""The default model end to end: convnext-server started with no model arguments serves
the digits ConvNeXt (default_model); every held-out digit, sent through gRPC Classify as PNG bytes,
gets the prediction the Python model made at training time, and the accuracy is the recorded one.
"""
import io
import json
import os
import sys
import unittest

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import Server, pb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELDOUT = os.path.join(ROOT, "default_model", "heldout.json")


def digit_png(values):
    """The held-out image as an 8-bit grayscale PNG, exactly as train.py builds its input."""
    image = Image.fromarray(np.rint(values * 255.0 / 16.0).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class DigitsTest(unittest.TestCase):
    def test_every_heldout_digit_matches_the_python_model(self):
        with open(HELDOUT) as f:
            heldout = json.load(f)
        digits = load_digits()
        server = Server()  # No --model and no --config: the default model.
        try:
            info = server.stub.GetModel(pb.GetModelRequest(), timeout=10)
            self.assertEqual(info.name, "digits")
            self.assertEqual(info.num_classes, 10)
            self.assertTrue(info.has_labels)
            images = [pb.Image(encoded=digit_png(digits.images[i])) for i in heldout["indices"]]
            predictions = []
            for start in range(0, len(images), 64):
                reply = server.stub.Classify(
                    pb.ClassifyRequest(images=images[start:start + 64], top_k=1), timeout=120)
                predictions += [r.classes[0].index for r in reply.results]
                for r in reply.results:
                    self.assertEqual(r.classes[0].label, f"digit {r.classes[0].index}")
            mismatches = [(i, p, q) for i, p, q in
                          zip(heldout["indices"], predictions, heldout["predictions"]) if p != q]
            self.assertEqual(mismatches, [], "(dataset index, served, python)")
            correct = sum(p == y for p, y in zip(predictions, heldout["labels"]))
            self.assertEqual(correct, heldout["correct"])
            self.assertAlmostEqual(correct / len(predictions), heldout["accuracy"])
            print(f"digits: {correct}/{len(predictions)} held-out digits correct, "
                  f"{len(mismatches)} predictions differ from the Python model", file=sys.stderr)
        finally:
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
