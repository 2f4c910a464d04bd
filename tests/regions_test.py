"""Region embeddings (EmbedRequest.regions) end to end over gRPC, against torchvision: the boxes of
real photos mapped through the CLASSIFICATION resize and crop, KEEP_SIZE, tensors, every pooling
option, and bad regions refused with INVALID_ARGUMENT without disturbing other calls.

The reference for every case is torchvision's convnext_tiny with the same random weights (stage
maps from model.features) and torchvision.ops.roi_align at spatial scale 1 / stride.

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
import grpc  # noqa: E402

STRIDES = {1: 4, 2: 8, 3: 16, 4: 32}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def decode(t):
    dtype = "<f2" if t.dtype == pb.FP16 else "<f4"
    return np.frombuffer(t.data, dtype).astype(np.float32).reshape(list(t.shape))


def random_boxes(rng, width, height, n):
    """n boxes inside a width x height image: big and small, a few on the edges, one empty."""
    x = rng.uniform(0, width, (n, 2))
    y = rng.uniform(0, height, (n, 2))
    boxes = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1).astype(np.float32)
    boxes[0] = [0, 0, width, height]
    boxes[1] = [width - 3, height - 5, width, height]
    boxes[2] = [7, 9, 7, 9]
    return boxes


def regions_message(boxes):
    return pb.ImageRegions(boxes=[pb.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for b in boxes])


def close(test, got, want, tol, what):
    test.assertEqual(got.shape, want.shape, what)
    scale = max(1.0, float(np.abs(want).max()))
    test.assertLessEqual(float(np.abs(got - want).max()), tol * scale, what)


class RegionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        torch.set_num_threads(2)
        cls.model = tiny_reference()
        cls.server = Server("--model", f"tiny={os.path.join(DATA, 'tiny.safetensors')}",
                            "--max_queue_delay_us", "20000")
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def stage_maps(self, x):
        import torch
        maps = []
        with torch.no_grad():
            h = torch.from_numpy(x)
            for i, layer in enumerate(self.model.features):
                h = layer(h)
                if i % 2 == 1:
                    maps.append(h)
        return maps

    @staticmethod
    def roi_align(stage_map, boxes, stage, output_size=1, sampling_ratio=0, aligned=False):
        import torch
        from torchvision.ops import roi_align
        out = roi_align(stage_map, [torch.from_numpy(np.asarray(boxes, np.float32))],
                        output_size, spatial_scale=1 / STRIDES[stage],
                        sampling_ratio=sampling_ratio if sampling_ratio > 0 else -1,
                        aligned=aligned).numpy()
        return out.reshape(out.shape[0], -1) if output_size == 1 else out

    @staticmethod
    def classification_input(path):
        """torchvision's transform of the photo, and where its boxes land: (scale, offset)."""
        from PIL import Image
        from torchvision import transforms
        image = Image.open(path).convert("RGB")
        tf = transforms.Compose([
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize(tuple(MEAN), tuple(STD))])
        w, h = image.size
        out_w, out_h = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        offset = np.array([round((out_w - 224) / 2), round((out_h - 224) / 2)] * 2, np.float32)
        scale = np.array([out_w / w, out_h / h] * 2, np.float32)
        return tf(image).unsqueeze(0).numpy(), (w, h), scale, offset

    def test_photo_boxes_follow_the_resize_and_crop(self):
        rng = np.random.default_rng(1)
        names = ["chelsea.png", "coffee.png", "astronaut.png"]
        images, regions, expected = [], [], []
        for name in names:
            x, (w, h), scale, offset = self.classification_input(photo_path(name))
            boxes = random_boxes(rng, w, h, 16)
            with open(photo_path(name), "rb") as f:
                images.append(pb.Image(encoded=f.read()))
            regions.append(regions_message(boxes))
            maps = self.stage_maps(x)
            mapped = boxes * scale - offset
            expected.append(([self.roi_align(maps[s - 1], mapped, s) for s in (1, 3, 4)],
                             maps[3][0].numpy()))
        reply = self.stub.Embed(pb.EmbedRequest(
            images=images, regions=regions, stages=[4], include_embedding=True,
            region_pooling=pb.RegionPooling(stages=[1, 3, 4])), timeout=300)
        for name, result, (want_regions, want_map) in zip(names, reply.results, expected):
            self.assertEqual(len(result.regions), 3)
            for stage, got, want in zip((1, 3, 4), result.regions, want_regions):
                self.assertEqual(list(got.shape), [16, [96, 192, 384, 768][stage - 1]])
                close(self, decode(got), want, 1e-4, f"{name} stage {stage}")
            close(self, decode(result.stages[0]), want_map, 1e-4, f"{name} stage map")
            self.assertEqual(list(result.embedding.shape), [768])

    def test_keep_size_bins_aligned_sampling_and_fp16(self):
        from PIL import Image
        w, h = Image.open(photo_path("chelsea.png")).size  # 451 x 300: padded to 480 x 320.
        x = keep_size_input("chelsea.png")
        maps = self.stage_maps(x)
        boxes = random_boxes(np.random.default_rng(2), w, h, 12)
        with open(photo_path("chelsea.png"), "rb") as f:
            encoded = pb.Image(encoded=f.read())
        for stage, k, sampling, aligned, dtype in [(2, 7, 2, True, pb.FP32),
                                                   (3, 3, 0, False, pb.FP16),
                                                   (1, 2, 5, False, pb.FP32)]:
            reply = self.stub.Embed(pb.EmbedRequest(
                images=[encoded], regions=[regions_message(boxes)], resize=pb.KEEP_SIZE,
                dtype=dtype, region_pooling=pb.RegionPooling(
                    stages=[stage], output_size=k, sampling_ratio=sampling, aligned=aligned)),
                timeout=300)
            result = reply.results[0]
            self.assertEqual(len(result.stages), 0)
            self.assertFalse(result.HasField("embedding"))
            got = decode(result.regions[0])
            want = self.roi_align(maps[stage - 1], boxes, stage, k, sampling, aligned)
            close(self, got, want, 2e-3 if dtype == pb.FP16 else 1e-4,
                  f"stage {stage} k={k} sampling={sampling} aligned={aligned}")

    def test_tensor_images_with_and_without_boxes_in_one_call(self):
        x = np.load(os.path.join(DATA, "tiny.features_input.npy"))  # [1, 3, 256, 320]
        tensor = pb.Image(tensor=pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes()))
        boxes = random_boxes(np.random.default_rng(3), 320, 256, 5)
        reply = self.stub.Embed(pb.EmbedRequest(
            images=[tensor, tensor], regions=[pb.ImageRegions(), regions_message(boxes)],
            region_pooling=pb.RegionPooling(stages=[2])), timeout=300)
        self.assertEqual(len(reply.results[0].regions), 0)
        want = self.roi_align(self.stage_maps(x)[1], boxes, 2)
        close(self, decode(reply.results[1].regions[0]), want, 1e-4, "tensor stage 2")

    def test_masked_regions_are_mask_weighted_means_of_roi_align_bins(self):
        """A box with an instance mask: torchvision's roi_align at the mask's size, weighted by
        the mask; beside unmasked boxes in one call, through the CLASSIFICATION resize."""
        x, (w, h), scale, offset = self.classification_input(photo_path("coffee.png"))
        rng = np.random.default_rng(4)
        boxes = random_boxes(rng, w, h, 6)
        # Soft 28 x 28 masks as Mask R-CNN gives them, a 1 x 1 one, and one with many zeros.
        masks = [rng.uniform(0, 1, (28, 28)).astype(np.float32) for _ in range(4)]
        masks.append(np.ones((1, 1), np.float32))
        masks.append((rng.uniform(0, 1, (14, 14)) > 0.7).astype(np.float32))
        masks[5][0, 0] = 1  # Not all zero.
        regions = regions_message(boxes)
        for m in masks:
            regions.masks.append(pb.RegionMask(size=m.shape[0], weights=m.ravel().tolist()))
        with open(photo_path("coffee.png"), "rb") as f:
            image = pb.Image(encoded=f.read())
        reply = self.stub.Embed(pb.EmbedRequest(
            images=[image, image], regions=[regions, regions_message(boxes)],
            region_pooling=pb.RegionPooling(stages=[3, 4], sampling_ratio=2)), timeout=300)
        maps = self.stage_maps(x)
        mapped = boxes * scale - offset
        for stage, got, plain in zip((3, 4), reply.results[0].regions, reply.results[1].regions):
            want = np.stack([
                (self.roi_align(maps[stage - 1], mapped[i:i + 1], stage, m.shape[0], 2)[0]
                 .reshape(-1, m.shape[0], m.shape[0]) * m).sum((1, 2)) / m.sum()
                for i, m in enumerate(masks)])
            close(self, decode(got), want, 1e-4, f"masked stage {stage}")
            # The masks changed the answer: without them it is plain RoIAlign.
            close(self, decode(plain), self.roi_align(maps[stage - 1], mapped, stage, 1, 2),
                  1e-4, f"unmasked stage {stage}")
            self.assertGreater(float(np.abs(decode(got) - decode(plain)).max()), 1e-3)

    def test_bad_regions_are_invalid_argument_and_harm_no_other_call(self):
        with open(photo_path("chelsea.png"), "rb") as f:  # 451 x 300
            image = pb.Image(encoded=f.read())
        good = regions_message([[0, 0, 451, 300]])
        nan = float("nan")
        bad = [
            (pb.EmbedRequest(images=[image], regions=[good, good]), "one per image"),
            (pb.EmbedRequest(images=[image], regions=[regions_message([[0, 0, nan, 1]])]),
             "finite"),
            (pb.EmbedRequest(images=[image], regions=[regions_message([[5, 0, 4, 1]])]),
             "x1 <= x2"),
            (pb.EmbedRequest(images=[image], regions=[regions_message([[-1, 0, 4, 1]])]),
             "0 <= x1"),
            (pb.EmbedRequest(images=[image], regions=[regions_message([[0, 0, 452, 300]])]),
             "not inside the 451x300 image"),
            (pb.EmbedRequest(images=[image],
                             regions=[regions_message([[0, 0, 1, 1]] * 257)]), "257 boxes"),
            (pb.EmbedRequest(images=[image], regions=[good],
                             region_pooling=pb.RegionPooling(stages=[5])), "1..4"),
            (pb.EmbedRequest(images=[image], regions=[good],
                             region_pooling=pb.RegionPooling(stages=[2, 2])), "distinct"),
            (pb.EmbedRequest(images=[image], regions=[good],
                             region_pooling=pb.RegionPooling(output_size=65)), "output_size"),
            (pb.EmbedRequest(images=[image], regions=[good],
                             region_pooling=pb.RegionPooling(sampling_ratio=65)),
             "sampling_ratio"),
            (pb.EmbedRequest(images=[image], regions=[pb.ImageRegions()]), "nothing to compute"),
            (pb.EmbedRequest(images=[image], regions=[pb.ImageRegions(
                boxes=good.boxes, masks=[pb.RegionMask(size=2, weights=[1, 1, 1])])]),
             "size x size weights"),
            (pb.EmbedRequest(images=[image], regions=[pb.ImageRegions(
                boxes=good.boxes, masks=[pb.RegionMask(size=1, weights=[0])])]), "all zero"),
            (pb.EmbedRequest(images=[image], regions=[pb.ImageRegions(
                boxes=good.boxes, masks=[pb.RegionMask(size=1, weights=[2])])]), "[0, 1]"),
            (pb.EmbedRequest(images=[image], regions=[pb.ImageRegions(
                boxes=list(good.boxes) * 2, masks=[pb.RegionMask(size=1, weights=[1])])]),
             "one per box"),
            (pb.EmbedRequest(images=[image], regions=[pb.ImageRegions(
                boxes=good.boxes, masks=[pb.RegionMask(size=1, weights=[1])])],
                region_pooling=pb.RegionPooling(output_size=2)), "output_size must be 1"),
        ]
        # Each bad call races a good one that may share its batch: the good one is answered.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for request, message in bad:
                good_call = pool.submit(self.stub.Embed, pb.EmbedRequest(
                    images=[image], regions=[good]), timeout=120)
                with self.assertRaises(grpc.RpcError) as ctx:
                    self.stub.Embed(request, timeout=120)
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, message)
                self.assertIn(message, ctx.exception.details())
                self.assertEqual(list(good_call.result().results[0].regions[0].shape), [1, 768])
        # The answer's size counts the regions: too many bins for the message limit is refused
        # before any work.
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.Embed(pb.EmbedRequest(
                images=[image] * 2, regions=[regions_message([[0, 0, 451, 300]] * 256)] * 2,
                region_pooling=pb.RegionPooling(stages=[1, 2, 3, 4], output_size=8)), timeout=60)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(self.server.health(), "SERVING")


if __name__ == "__main__":
    unittest.main()
