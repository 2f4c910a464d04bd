"""Embed answers that fit: stage maps pooled to a grid (average, max, GeM) against torch's own
pooling of torchvision's stage maps, and the compact encodings (FP16, BF16, INT8 with a scale per
channel) decoded with numpy against the FP32 answer; bad options are INVALID_ARGUMENT.

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN.
"""
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import DATA, Server, pb, photo_path, tiny_reference  # noqa: E402
import grpc  # noqa: E402


def decode(t):
    """A Tensor's values as float32, for every dtype the server answers with."""
    shape = list(t.shape)
    if t.dtype in (pb.FP32, pb.DATA_TYPE_UNSPECIFIED):
        return np.frombuffer(t.data, "<f4").reshape(shape)
    if t.dtype == pb.FP16:
        return np.frombuffer(t.data, "<f2").astype(np.float32).reshape(shape)
    if t.dtype == pb.BF16:
        bits = np.frombuffer(t.data, "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    assert t.dtype == pb.INT8, t.dtype
    q = np.frombuffer(t.data, np.int8).astype(np.float32).reshape(shape)
    scales = np.asarray(t.scales, np.float32)
    if t.scale_axis < 0:
        assert scales.shape == (1,)
        return q * scales[0]
    view = [1] * len(shape)
    view[t.scale_axis] = shape[t.scale_axis]
    return q * scales.reshape(view)


class EmbedTransportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        torch.set_num_threads(2)
        model = tiny_reference()
        cls.x = np.load(os.path.join(DATA, "tiny.features_input.npy"))  # [1, 3, 256, 320]
        cls.maps = []
        with torch.no_grad():
            h = torch.from_numpy(cls.x)
            for i, layer in enumerate(model.features):
                h = layer(h)
                if i % 2 == 1:
                    cls.maps.append(h)
        cls.server = Server("--model", f"tiny={os.path.join(DATA, 'tiny.safetensors')}")
        cls.stub = cls.server.stub
        cls.image = pb.Image(tensor=pb.Tensor(shape=list(cls.x.shape),
                                              data=cls.x.astype("<f4").tobytes()))

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def embed(self, **kwargs):
        return self.stub.Embed(pb.EmbedRequest(images=[self.image], **kwargs), timeout=300)

    def test_pooled_stage_maps_equal_torch_pooling(self):
        import torch.nn.functional as F
        Kind = pb.SpatialPooling
        for kind, grid, p in [(Kind.AVERAGE, 1, 0), (Kind.AVERAGE, 7, 0), (Kind.MAX, 2, 0),
                              (Kind.MAX, 7, 0), (Kind.GEM, 1, 0), (Kind.GEM, 3, 4.5)]:
            reply = self.embed(stages=[4, 2], stage_pooling=pb.SpatialPooling(
                kind=kind, grid=grid, gem_p=p))
            for got, stage in zip(reply.results[0].stages, (4, 2)):
                m = self.maps[stage - 1]  # Stage 4 is 8 x 10: a grid of 7 has uneven bins.
                if kind == Kind.AVERAGE:
                    want = F.adaptive_avg_pool2d(m, grid)
                elif kind == Kind.MAX:
                    want = F.adaptive_max_pool2d(m, grid)
                else:
                    e = p or 3.0
                    want = F.adaptive_avg_pool2d(m.double().clamp(min=1e-6).pow(e), grid).pow(1 / e)
                want = want[0].float().numpy()
                self.assertEqual(list(got.shape), list(want.shape))
                scale = max(1.0, float(np.abs(want).max()))
                self.assertLessEqual(float(np.abs(decode(got) - want).max()), 1e-4 * scale,
                                     f"{Kind.Kind.Name(kind)} grid {grid} stage {stage}")

    def test_compact_dtypes_decode_to_the_fp32_answer(self):
        request = dict(stages=[1, 4], include_embedding=True,
                       regions=[pb.ImageRegions(boxes=[pb.Box(x1=0, y1=0, x2=320, y2=256),
                                                       pb.Box(x1=40, y1=8, x2=200, y2=90)])],
                       region_pooling=pb.RegionPooling(stages=[3], output_size=2))
        exact = self.embed(**request).results[0]
        tensors = lambda r: [r.embedding, r.stages[0], r.stages[1], r.regions[0]]  # noqa: E731
        for dtype, element in ((pb.FP16, 2), (pb.BF16, 2), (pb.INT8, 1)):
            got = self.embed(dtype=dtype, **request).results[0]
            for g, w, axis in zip(tensors(got), tensors(exact), (-1, 0, 0, 1)):
                want = decode(w)
                self.assertEqual(g.dtype, dtype)
                self.assertEqual(len(g.data), want.size * element)
                values = decode(g)
                if dtype == pb.FP16:
                    np.testing.assert_array_equal(values, want.astype(np.float16).astype(np.float32))
                elif dtype == pb.BF16:
                    # Round to nearest even on the float32 bits.
                    bits = want.view(np.uint32).astype(np.uint64)
                    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
                    np.testing.assert_array_equal(values, rounded.view(np.float32))
                else:
                    self.assertEqual(g.scale_axis, axis)
                    if axis < 0:
                        largest = np.abs(want).max(keepdims=True)
                    else:
                        largest = np.moveaxis(np.abs(want), axis, 0).reshape(
                            want.shape[axis], -1).max(1)
                    np.testing.assert_allclose(g.scales, largest / 127, rtol=1e-6)
                    view = [1] * want.ndim
                    if axis >= 0:
                        view[axis] = want.shape[axis]
                    half_scale = (np.asarray(g.scales, np.float32) / 2).reshape(
                        view if axis >= 0 else [1])
                    self.assertTrue(np.all(np.abs(values - want) <= half_scale * 1.0001 + 1e-12))
        # INT8 of pooled maps: a stage 1 map of 64 x 80 x 96 channels, pooled to 4 x 4, is
        # 1,536 bytes and 96 scales instead of 1,966,080 bytes of FP32.
        small = self.embed(stages=[1], dtype=pb.INT8, stage_pooling=pb.SpatialPooling(
            kind=pb.SpatialPooling.AVERAGE, grid=4)).results[0].stages[0]
        self.assertEqual((len(small.data), len(small.scales)), (96 * 16, 96))

    def test_bad_options_are_invalid_argument(self):
        Kind = pb.SpatialPooling
        bad = [
            (dict(stages=[1], stage_pooling=pb.SpatialPooling(kind=9)), "unknown stage_pooling"),
            (dict(stages=[1], stage_pooling=pb.SpatialPooling(kind=Kind.AVERAGE, grid=65)),
             "grid must be in 1..64"),
            (dict(stages=[1], stage_pooling=pb.SpatialPooling(kind=Kind.GEM, gem_p=-1)),
             "gem_p"),
            (dict(stages=[1], stage_pooling=pb.SpatialPooling(kind=Kind.GEM, gem_p=float("nan"))),
             "gem_p"),
            (dict(include_embedding=True, stage_pooling=pb.SpatialPooling(kind=Kind.MAX)),
             "needs stages"),
            (dict(stages=[1], dtype=17), "unknown dtype"),
        ]
        for kwargs, message in bad:
            with self.assertRaises(grpc.RpcError) as ctx:
                self.embed(**kwargs)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, message)
            self.assertIn(message, ctx.exception.details())
        int8_input = pb.Image(tensor=pb.Tensor(shape=[3, 8, 8], dtype=pb.INT8, data=bytes(192)))
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.Embed(pb.EmbedRequest(images=[int8_input], stages=[1]), timeout=60)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("must be FP32 or FP16", ctx.exception.details())


def reassemble(chunks):
    """An EmbedStream answer as the EmbedResponse Embed would give, checking the protocol."""
    response, tensors, pieces = None, [], 0
    for chunk in chunks:
        if response is None:
            assert chunk.HasField("header"), "the first message must be the header"
            response = chunk.header
            for r in response.results:
                if r.embedding.shape:
                    tensors.append(r.embedding)
                tensors.extend(r.stages)
                tensors.extend(r.regions)
            data = [bytearray() for _ in tensors]
            continue
        assert chunk.offset == len(data[chunk.tensor]), "pieces come in order"
        data[chunk.tensor] += chunk.data
        pieces += 1
    for t, d in zip(tensors, data):
        t.data = bytes(d)
    return response, pieces


class EmbedStreamTest(unittest.TestCase):
    """A server whose max_message_bytes (2 MiB) is smaller than the answers asked for."""

    @classmethod
    def setUpClass(cls):
        cls.config = tempfile.NamedTemporaryFile("w", suffix=".textproto", delete=False)
        checkpoint = os.path.abspath(os.path.join(DATA, "tiny.safetensors"))
        cls.config.write(f'model {{ name: "tiny" checkpoint: "{checkpoint}" }}'
                         ' max_message_bytes: 2097152')
        cls.config.close()
        cls.server = Server("--config", cls.config.name)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        os.unlink(cls.config.name)

    def test_stage_maps_larger_than_a_message_arrive_in_pieces(self):
        import torch
        from PIL import Image
        names = ["chelsea.png", "coffee.png"]  # Stage 1 at KEEP_SIZE: 3.7 MB and 6.1 MB.
        images = []
        for name in names:
            with open(photo_path(name), "rb") as f:
                images.append(pb.Image(encoded=f.read()))
        request = pb.EmbedRequest(images=images, stages=[1, 4], resize=pb.KEEP_SIZE)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.server.stub.Embed(request, timeout=300)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("max_message_bytes", ctx.exception.details())

        reply, pieces = reassemble(self.server.stub.EmbedStream(
            pb.EmbedStreamRequest(request=request, chunk_bytes=1 << 20), timeout=300))
        self.assertGreaterEqual(pieces, 10)  # 9.8 MB of stage maps in pieces of 1 MiB at most.
        model = tiny_reference()
        for name, result in zip(names, reply.results):
            rgb = np.asarray(Image.open(photo_path(name)).convert("RGB"), np.float32)
            h, w = rgb.shape[:2]
            x = np.zeros((1, 3, (h + 31) // 32 * 32, (w + 31) // 32 * 32), np.float32)
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            x[0, :, :h, :w] = ((rgb / 255 - mean) / std).transpose(2, 0, 1)
            with torch.no_grad():
                s1 = model.features[:2](torch.from_numpy(x))
                s4 = model.features[2:](s1)
            for got, want in zip(result.stages, (s1, s4)):
                want = want[0].numpy()
                self.assertLessEqual(float(np.abs(decode(got) - want).max()),
                                     1e-4 * max(1.0, float(np.abs(want).max())), name)
        # Bad chunk sizes and requests fail the stream with the status Embed would give.
        for chunk_bytes, code in ((100, grpc.StatusCode.INVALID_ARGUMENT),
                                  (17 << 20, grpc.StatusCode.INVALID_ARGUMENT)):
            with self.assertRaises(grpc.RpcError) as ctx:
                list(self.server.stub.EmbedStream(pb.EmbedStreamRequest(
                    request=request, chunk_bytes=chunk_bytes), timeout=60))
            self.assertEqual(ctx.exception.code(), code)
        with self.assertRaises(grpc.RpcError) as ctx:
            list(self.server.stub.EmbedStream(pb.EmbedStreamRequest(
                request=pb.EmbedRequest(images=images, stages=[7])), timeout=60))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        # A client that stops reading after the header: the server keeps serving.
        stream = self.server.stub.EmbedStream(pb.EmbedStreamRequest(request=request), timeout=300)
        next(stream)
        stream.cancel()
        self.assertEqual(self.server.health(), "SERVING")
        small = self.server.stub.Embed(pb.EmbedRequest(images=images[:1], stages=[4],
                                                       resize=pb.KEEP_SIZE), timeout=120)
        self.assertEqual(list(small.results[0].stages[0].shape), [768, 10, 15])


if __name__ == "__main__":
    unittest.main()
