"""Writes one random-weight ConvNeXt in every checkpoint layout and container, plus broken and
hostile checkpoints, for tests/checkpoint_formats_test.py. Test-only (python3-torch).

Called by convnext_reference.py with the torchvision model of its "custom" case; every good file
here holds the same weights (or their fp16/bf16 rounding), so one reference output checks them
all. The hostile files are never loaded by Python here: they are only written.
"""
import argparse
import collections
import json
import os
import zipfile

import numpy as np
import torch


def tv_to_fair(key):
    p = key.split(".")
    if p[0] == "features":
        f = int(p[1])
        if f % 2 == 0:
            return f"downsample_layers.{f // 2}.{p[2]}.{p[3]}"
        block = f"stages.{f // 2}.{p[2]}."
        if p[3] == "layer_scale":
            return block + "gamma"
        part = {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}[p[4]]
        return block + part + "." + p[5]
    return {"0": "norm.", "2": "head."}[p[1]] + p[2]


def fair_to_timm(key):
    p = key.split(".")
    if p[0] == "downsample_layers":
        i = int(p[1])
        return f"stem.{p[2]}.{p[3]}" if i == 0 else f"stages.{i}.downsample.{p[2]}.{p[3]}"
    if p[0] == "stages":
        part = {"dwconv": "conv_dw", "norm": "norm", "pwconv1": "mlp.fc1",
                "pwconv2": "mlp.fc2", "gamma": "gamma"}[p[3]]
        return f"stages.{p[1]}.blocks.{p[2]}.{part}" + ("." + p[4] if len(p) == 5 else "")
    return {"norm": "head.norm.", "head": "head.fc."}[p[0]] + p[1]


def fair_to_hf(key):
    p = key.split(".")
    if p[0] == "downsample_layers":
        i = int(p[1])
        if i == 0:
            return "convnext.embeddings." + ("patch_embeddings." if p[2] == "0" else
                                             "layernorm.") + p[3]
        return f"convnext.encoder.stages.{i}.downsampling_layer.{p[2]}.{p[3]}"
    if p[0] == "stages":
        part = {"dwconv": "dwconv", "norm": "layernorm", "pwconv1": "pwconv1",
                "pwconv2": "pwconv2", "gamma": "layer_scale_parameter"}[p[3]]
        return (f"convnext.encoder.stages.{p[1]}.layers.{p[2]}.{part}" +
                ("." + p[4] if len(p) == 5 else ""))
    return {"norm": "convnext.layernorm.", "head": "classifier."}[p[0]] + p[1]


def fair_state_dict(tv_sd):
    sd = collections.OrderedDict()
    for k, v in tv_sd.items():
        k2 = tv_to_fair(k)
        sd[k2] = v.reshape(-1) if k2.endswith("gamma") else v
    sd._metadata = getattr(tv_sd, "_metadata", collections.OrderedDict())
    return sd


class _Hostile:
    """Pickles as a call of `func(*args)`: what a malicious checkpoint does."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def logits_with(model, sd_tv, x):
    """Reference logits of `model` after loading torchvision-layout weights `sd_tv`."""
    import copy
    m = copy.deepcopy(model)
    m.load_state_dict({k: v.float() for k, v in sd_tv.items()})
    with torch.no_grad():
        return m(x)


def write(out, model, x, x_features, write_safetensors, save_npy):
    os.makedirs(out, exist_ok=True)
    tv = model.state_dict()
    fair = fair_state_dict(tv)
    p = lambda name: os.path.join(out, name)

    # Official FAIR training checkpoint: {'model', 'optimizer', 'epoch', 'args': Namespace}.
    torch.save({"model": fair, "optimizer": {"state": {}, "param_groups": [{"lr": 4e-3}]},
                "epoch": 3, "args": argparse.Namespace(lr=4e-3, model="convnext_custom")},
               p("fair.pth"))
    torch.save(fair, p("fair_bare.pth"))
    torch.save(tv, p("torchvision.pth"))
    torch.save(collections.OrderedDict(("module." + k, v) for k, v in tv.items()),
               p("module_prefixed.pth"))
    timm = collections.OrderedDict((fair_to_timm(k), v) for k, v in fair.items())
    torch.save(timm, p("timm.pth"))
    # timm's conv_mlp form: pointwise weights stored as 1x1 convolutions [4C, C, 1, 1].
    write_safetensors(p("timm_conv_mlp.safetensors"), collections.OrderedDict(
        (k, v[:, :, None, None] if ".mlp.fc" in k and k.endswith("weight") else v)
        for k, v in timm.items()))
    write_safetensors(p("fair.safetensors"), fair)

    # Hugging Face: weights + config.json with a deliberately unusual final LayerNorm epsilon,
    # so that the test can tell whether config.json was read.
    hf = collections.OrderedDict((fair_to_hf(k), v) for k, v in fair.items())
    num_classes = tv["classifier.2.weight"].shape[0]
    config = {"model_type": "convnext", "layer_norm_eps": 0.5,
              "id2label": {str(i): f"class_{i}" for i in range(num_classes)}}
    for sub, writer in (("hf_bin", lambda path: torch.save(hf, path)),
                        ("hf_safetensors", lambda path: write_safetensors(path, hf))):
        os.makedirs(p(sub), exist_ok=True)
        writer(p(os.path.join(sub, "pytorch_model.bin" if sub == "hf_bin" else
                              "model.safetensors")))
        with open(p(os.path.join(sub, "config.json")), "w") as f:
            json.dump(config, f)
    m_hf = logits_model = None
    import copy
    m_hf = copy.deepcopy(model)
    m_hf.classifier[0].eps = 0.5
    with torch.no_grad():
        save_npy(p("hf.logits.npy"), m_hf(x))

    # Reduced precision: the reference uses the same rounded weights.
    half = collections.OrderedDict((k, v.half()) for k, v in fair.items())
    torch.save({"model": half}, p("fp16.pth"))
    save_npy(p("fp16.logits.npy"), logits_with(model, {k: v.half() for k, v in tv.items()}, x))
    bf16 = collections.OrderedDict((k, v.bfloat16()) for k, v in tv.items())
    write_safetensors(p("bf16.safetensors"), bf16)
    torch.save(bf16, p("bf16.pth"))
    save_npy(p("bf16.logits.npy"), logits_with(model, bf16, x))

    # An mmdet/mmseg detector: backbone with per-stage norms norm0..3, no norm/head, plus a neck
    # and heads that are not ours.
    g = torch.Generator().manual_seed(7)
    det = collections.OrderedDict()
    for k, v in fair.items():
        if not (k.startswith("norm.") or k.startswith("head.")):
            det["backbone." + k] = v
    dims = [tv[f"features.{2 * i + 1}.0.block.0.weight"].shape[0] for i in range(4)]
    norms = []
    for i, c in enumerate(dims):
        w = 1 + 0.1 * torch.randn(c, generator=g)
        b = 0.1 * torch.randn(c, generator=g)
        det[f"backbone.norm{i}.weight"], det[f"backbone.norm{i}.bias"] = w, b
        norms.append((w, b))
    det["neck.lateral_convs.0.conv.weight"] = torch.randn(8, dims[0], 1, 1, generator=g)
    det["rpn_head.rpn_conv.weight"] = torch.randn(8, 8, 3, 3, generator=g)
    torch.save({"meta": {"epoch": 12}, "state_dict": det}, p("mmdet_backbone.pth"))
    with torch.no_grad():
        h, stage = x_features, 0
        for i, layer in enumerate(model.features):
            h = layer(h)
            if i % 2 == 1:
                w, b = norms[stage]
                y = torch.nn.functional.layer_norm(h.permute(0, 2, 3, 1), (h.shape[1],), w, b,
                                                   1e-6).permute(0, 3, 1, 2)
                stage += 1
                save_npy(p(f"mmdet.stage{stage}.npy"), y)

    # Broken and hostile files.
    torch.save(fair, p("legacy.pth"), _use_new_zipfile_serialization=False)
    with open(p("fair.pth"), "rb") as f:
        data = f.read()
    with open(p("truncated.pth"), "wb") as f:
        f.write(data[: len(data) // 2])
    with zipfile.ZipFile(p("fair.pth")) as src, \
            zipfile.ZipFile(p("corrupt_pickle.pth"), "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                content = content[:40] + b"\xff\xfe garbage opcodes \x00" + content[60:]
            dst.writestr(info.filename, content)
    marker = p("PWNED")
    torch.save({"model": fair, "x": _Hostile(os.system, (f"touch {marker}",))},
               p("hostile_os_system.pth"))
    torch.save({"model": fair, "x": _Hostile(eval, (f"open('{marker}', 'w')",))},
               p("hostile_eval.pth"))
    missing = collections.OrderedDict(fair)
    del missing["stages.1.0.norm.bias"]
    torch.save({"model": missing}, p("missing_tensor.pth"))
    wrong = collections.OrderedDict(fair)
    wrong["stages.0.1.dwconv.weight"] = torch.zeros(16, 1, 5, 5)
    torch.save({"model": wrong}, p("wrong_shape.pth"))
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=1.0)}, p("no_state_dict.pth"))
    open(p("empty.pth"), "wb").close()
