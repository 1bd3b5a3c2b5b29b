#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus (fuzz/corpus/<target>/): small valid inputs, a few KB each,
so that mutations start from files the readers accept. Needs only the Python standard library:
torch and Lightning classes are stood in for by stub classes with the same module paths, which
is all a pickle records. The model-file seed is written by `cargo test -p msdm --lib
fuzz_seed` (it needs our own writer); see docs/fuzzing.md."""
import io
import os
import pickle
import struct
import sys
import types
import wave
import zipfile
import collections
import math

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def out(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print(f"{target}/{name}: {len(data)} bytes")


# --- import_checkpoint: a tiny Lightning checkpoint --------------------------------------------

def stub_module(name):
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        n = ".".join(parts[:i])
        if n not in sys.modules:
            sys.modules[n] = types.ModuleType(n)
    return sys.modules[name]


torch = stub_module("torch")
tutils = stub_module("torch._utils")
parsing = stub_module("pytorch_lightning.utilities.parsing")
adp = stub_module("audio_diffusion_pytorch.diffusion")


class FloatStorage:
    pass


class HalfStorage:
    pass


FloatStorage.__module__ = HalfStorage.__module__ = "torch"
torch.FloatStorage, torch.HalfStorage = FloatStorage, HalfStorage


def _rebuild_tensor_v2(*a):
    pass


_rebuild_tensor_v2.__module__ = "torch._utils"
tutils._rebuild_tensor_v2 = _rebuild_tensor_v2


class AttributeDict(dict):
    pass


AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"
parsing.AttributeDict = AttributeDict


class LogNormalDistribution:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std


LogNormalDistribution.__module__ = "audio_diffusion_pytorch.diffusion"
adp.LogNormalDistribution = LogNormalDistribution


class Storage:
    def __init__(self, cls, key, data):
        self.cls, self.key, self.data = cls, key, data


class Tensor:
    """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, grad, hooks)."""

    def __init__(self, storage, size, stride, offset=0):
        self.storage, self.size, self.stride, self.offset = storage, size, stride, offset

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            esize = 4 if obj.cls is FloatStorage else 2
            return ("storage", obj.cls, obj.key, "cpu", len(obj.data) // esize)
        return None


def checkpoint(protocol=2, half=False):
    cls = HalfStorage if half else FloatStorage
    fmt = "<e" if half else "<f"
    vals = [math.sin(i) for i in range(24)]
    s0 = Storage(cls, "0", b"".join(struct.pack(fmt, v) for v in vals))
    s1 = Storage(cls, "1", b"".join(struct.pack(fmt, v) for v in vals[:4]))
    w = Tensor(s0, (2, 3, 4), (12, 4, 1))
    wt = Tensor(s0, (4, 3), (1, 4), 2)  # a strided, offset view of the same storage
    b = Tensor(s1, (4,), (1,))
    sd = collections.OrderedDict()
    for prefix in ["model.unet.", "model.diffusion.net."]:
        sd[prefix + "to_time.0.0.weights"] = w
        sd[prefix + "to_time.0.1.weight"] = wt
        sd[prefix + "to_time.0.1.bias"] = b
    hp = AttributeDict(
        in_channels=4, channels=16, patch_factor=4, patch_blocks=1, resnet_groups=4, kernel_multiplier_downsample=2,
        multipliers=[1, 2, 2], factors=[4, 2], num_blocks=[1, 1], attentions=[0, 1], attention_heads=2,
        attention_features=8, attention_multiplier=2, diffusion_sigma_distribution=LogNormalDistribution(-3.0, 1.0),
        diffusion_sigma_data=0.2,
    )
    root = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.7.7", "state_dict": sd,
            "hyper_parameters": hp, "hparams_name": "kwargs"}
    buf = io.BytesIO()
    TorchPickler(buf, protocol=protocol).dump(root)
    pkl = buf.getvalue()
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", s0.data)
        zf.writestr("archive/data/1", s1.data)
        zf.writestr("archive/version", "3\n")
    return pkl, z.getvalue()


pkl2, zip2 = checkpoint(2)
pkl4, zip4 = checkpoint(4, half=True)
out("import_checkpoint", "lightning_p2.ckpt", zip2)
out("import_checkpoint", "lightning_p4_f16.ckpt", zip4)
# Raw pickles: the target wraps input without a zip signature into an archive (data.pkl plus
# storages 0 and 1), so mutations reach the pickle machine past the zip CRC.
out("import_checkpoint", "data_p2.pkl", pkl2)
out("import_checkpoint", "data_p4.pkl", pkl4)
out("import_checkpoint", "data_p0.pkl", pickle.dumps({"a": [1, 2.5, "x", (None, True)], "b": {1, 2}}, protocol=0))

# --- audio_decode: short WAV, FLAC, MP3, OGG ----------------------------------------------------


def wav(rate, channels, width, frames):
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        data = bytearray()
        for i in range(frames):
            for c in range(channels):
                v = math.sin(2 * math.pi * 440 * (c + 1) * i / rate) * 0.5
                data += int(v * (2 ** (8 * width - 1) - 1)).to_bytes(width, "little", signed=True)
        w.writeframes(bytes(data))
    return b.getvalue()


def wav_float(rate, frames):
    data = b"".join(struct.pack("<f", 0.5 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames))
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def flac_prefix(path, frames):
    """The first `frames` FLAC frames of a fixture, STREAMINFO's total patched to match."""
    data = open(path, "rb").read()
    assert data[:4] == b"fLaC"
    pos, streaminfo = 4, None
    while True:
        hdr = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 4], "big")
        if hdr & 0x7F == 0:
            streaminfo = pos + 4
        pos += 4 + length
        if hdr & 0x80:
            break
    block = int.from_bytes(data[streaminfo:streaminfo + 2], "big")
    starts = [i for i in range(pos, len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xF8]
    cut = starts[frames]
    out_ = bytearray(data[:cut])
    # total samples: low 36 bits of bytes 13..17 of STREAMINFO
    field = int.from_bytes(out_[streaminfo + 13:streaminfo + 18], "big")
    field = (field & ~((1 << 36) - 1)) | (block * frames)
    out_[streaminfo + 13:streaminfo + 18] = field.to_bytes(5, "big")
    out_[streaminfo + 18:streaminfo + 34] = bytes(16)  # MD5 unknown
    return bytes(out_)


out("audio_decode", "i16_stereo.wav", wav(8000, 2, 2, 200))
out("audio_decode", "i24_mono.wav", wav(22050, 1, 3, 300))
out("audio_decode", "f32_mono.wav", wav_float(44100, 256))
fixtures = os.path.join(REPO, "tests", "fixtures", "audio")
out("audio_decode", "mono.flac", flac_prefix(os.path.join(fixtures, "sine_48k_mono.flac"), 1))
out("audio_decode", "mono.mp3", open(os.path.join(fixtures, "sine_22k05_mono.mp3"), "rb").read())
out("audio_decode", "stereo.ogg", open(os.path.join(fixtures, "sine_44k1_stereo.ogg"), "rb").read())

# --- cli_given: --given lists, --constrained-source values, settings JSON -----------------------
out("cli_given", "given_one", b"drums=drums.wav")
out("cli_given", "given_many", b"drums=d.wav\npiano=silence\nguitar=g.flac")
out("cli_given", "constrained_index", b"2")
out("cli_given", "settings_separate",
    b'{"steps":150,"churn":20.0,"resamples":2,"sigma_min":0.0001,"sigma_max":1.0,"rho":7.0,'
    b'"likelihood":{"dirac":{"constrained":0}},"seed":0,"mono":false,"batch":8}')
out("cli_given", "settings_gaussian",
    b'{"separate":{"steps":64,"churn":40.0,"resamples":1,"sigma_min":0.0001,"sigma_max":1.0,"rho":7.0,'
    b'"likelihood":{"gaussian":{"gamma_coeff":0.75}},"seed":3,"mono":true,"batch":4}}')
