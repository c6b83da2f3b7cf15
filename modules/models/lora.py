"""LoRA in kohya's format (SD 1.x/2.x and SDXL), applied to a loaded model and taken off again exactly.

    prompt --parse_lora_tags--> calls --find_lora--> files --LoraCache.load--> networks
           --apply_loras(model, ...)--> patched weights for the duration of a `with` block

A kohya file names each adapted layer by its module path with dots turned into underscores, behind a prefix
that says which network it belongs to:

- `lora_unet_*`: the UNet. sd-scripts writes SD 1.x/2.x files with diffusers names
  (`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`) and SDXL files with the original
  LDM names (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`); both are accepted for every family.
- `lora_te_*`: the one text encoder of SD 1.x/2.x; `lora_te1_*` / `lora_te2_*`: SDXL's CLIP-L and OpenCLIP-G.
  All use transformers names (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`), with or without the
  `text_model_` level, since transformers >= 5.6 dropped that level from CLIPTextModel.

Each layer has `<name>.lora_down.weight` [rank, in, (kh, kw)], `<name>.lora_up.weight` [out, rank, (1, 1)] and
optionally `<name>.alpha`; the change to the layer's weight is `multiplier * alpha / rank * up @ down`.
Any other key (LoHa, LoKr, DoRA, norm layers, diffusers/PEFT names) is counted as unknown, never fatal.

Patching adds the change into the loaded weights in place and restores the saved originals bit for bit on exit:
no second copy of the model, and the next prompt without a tag gives exactly the image it gave before.
Thread safety: `apply_loras` changes weights that every generation on the model reads, so the caller must hold
the model's device lock for the whole `with` block (the job worker does; one worker per device).

Short hash ("Lora hashes" infotext): for safetensors, AUTOMATIC1111's and kohya's "addnet" hash, the sha256 of
the file after its header (so editing metadata keeps the hash); for pickled files, the sha256 of the whole file.
The first 12 hex digits are shown.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from modules.models import ldm_layout
from modules.models import safe_load

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
SHORT_HASH_LENGTH = 12
_HASH_BLOCK = 1 << 20

# ------------------------------------------------------------------------------------------------ prompt tags

# AUTOMATIC1111's extra-network syntax `<kind:args>`; only the LoRA kinds are taken out here.
_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_TAG_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraCall:
    """One `<lora:...>` tag: which LoRA, and how strongly on the text encoders and on the UNet."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


class LoraTagError(ValueError):
    """A `<lora:...>` tag whose weights are not numbers."""


def _number(text: str, tag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LoraTagError(f"LoRA tag <{tag}>: {text!r} is not a number") from None


def _call_from_args(args: str, tag: str) -> LoraCall:
    # As AUTOMATIC1111: `name:te:unet:dyn` positionally, or `te=`, `unet=`, `dyn=` by name; unet defaults to te.
    items = args.split(":")
    positional = [item for item in items if "=" not in item]
    named = dict(item.split("=", 1) for item in items if "=" in item)
    if not positional or not positional[0].strip():
        raise LoraTagError(f"LoRA tag <{tag}> names no LoRA")
    name = positional[0].strip()
    te_text = named.get("te", positional[1] if len(positional) > 1 else None)
    te_weight = _number(te_text, tag) if te_text is not None else 1.0
    unet_text = named.get("unet", positional[2] if len(positional) > 2 else None)
    unet_weight = _number(unet_text, tag) if unet_text is not None else te_weight
    # `dyn` (dynamic rank) is accepted for compatibility and not used: every rank of the file is applied.
    return LoraCall(name, te_weight, unet_weight)


def parse_lora_tags(prompt: str) -> tuple[str, list[LoraCall]]:
    """Take `<lora:...>` and `<lyco:...>` tags out of a prompt.

    Other `<kind:...>` tags stay in the returned prompt for whoever handles that kind.
    """
    calls: list[LoraCall] = []

    def take(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2)
        if kind.lower() not in LORA_TAG_KINDS:
            return match.group(0)
        calls.append(_call_from_args(args, match.group(0)[1:-1]))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, prompt), calls


# -------------------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file on disk. `name` is the file stem; `alias` its path below the folder, without extension."""

    name: str
    alias: str
    path: Path


def list_lora_files(directories: Iterable[Path]) -> list[LoraFile]:
    """Every LoRA file below the folders (recursively), ordered by folder, then path."""
    found: list[LoraFile] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in LORA_SUFFIXES)
        for path in paths:
            alias = path.relative_to(directory).with_suffix("").as_posix()
            found.append(LoraFile(name=path.stem, alias=alias, path=path))
    return found


def find_lora(files: Sequence[LoraFile], name: str) -> LoraFile | None:
    """The file a tag names: by stem or relative path, exactly first, then ignoring case."""
    for matches in (lambda f: name in (f.name, f.alias),
                    lambda f: name.lower() in (f.name.lower(), f.alias.lower())):
        hit = next((f for f in files if matches(f)), None)
        if hit is not None:
            return hit
    return None


def lora_short_hash(path: Path) -> str:
    """12 hex digits: the "addnet" hash (sha256 after the header) for safetensors, else the file's sha256."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if safe_load.sniff_format(path) is safe_load.FileFormat.SAFETENSORS:
            (header_len,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + header_len)
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()[:SHORT_HASH_LENGTH]


def lora_metadata(path: Path) -> dict[str, str]:
    """The safetensors `__metadata__` (kohya's `ss_*` training notes, shown by `/sdapi/v1/loras`); {} for pickles."""
    path = Path(path)
    if safe_load.sniff_format(path) is not safe_load.FileFormat.SAFETENSORS:
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def format_lora_hashes(hashes: Mapping[str, str]) -> str:
    """The `Lora hashes` infotext value, "name: hash, name: hash", names stripped of `:` and `,` as A1111 does."""
    return ", ".join(f"{name.translate(str.maketrans('', '', ':,'))}: {short}" for name, short in hashes.items())


# ---------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class LoraLayer:
    """The low-rank change to one layer: `alpha / rank * up @ down` (alpha defaults to rank, i.e. scale 1)."""

    down: Tensor
    up: Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def weight_delta(self, shape: torch.Size, multiplier: float, device: torch.device) -> Tensor | None:
        """multiplier * scale * up @ down shaped like a weight of `shape`, in float32; None if it cannot fit."""
        down = self.down.to(device, torch.float32)
        up = self.up.to(device, torch.float32)
        if down.ndim == 4 and down.shape[2:] != (1, 1):
            if up.ndim != 4 or up.shape[2:] != (1, 1):
                return None
            # A k x k down conv followed by a 1 x 1 up conv is one k x k conv; this composes them as kohya does.
            updown = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        else:
            # Linear, or 1 x 1 convs on either side: a plain matrix product; reshape also lets a Linear-shaped
            # LoRA adapt a 1 x 1 conv (and back), as SD 2.x files made for the other projection type need.
            updown = up.flatten(1) @ down.flatten(1)
        if updown.numel() != shape.numel():
            return None
        return updown.reshape(shape) * (multiplier * self.scale)


@dataclass(frozen=True)
class LoraNetwork:
    """A parsed LoRA file: its layers by kohya name (`lora_unet_...`, `lora_te1_...`) and the keys it did not use."""

    name: str
    path: Path | None
    layers: Mapping[str, LoraLayer]
    unknown_keys: tuple[str, ...] = ()
    shorthash: str = ""


_LORA_KEY = re.compile(r"^(lora_(?:unet|te|te1|te2)_\w+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def parse_kohya_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, LoraLayer], list[str]]:
    """kohya keys -> {layer name: LoraLayer}, and the keys that are not a complete kohya LoRA layer."""
    parts: dict[str, dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            unknown.append(key)
        else:
            parts.setdefault(match.group(1), {})[match.group(2)] = value
    layers: dict[str, LoraLayer] = {}
    for name, tensors in parts.items():
        if "lora_down.weight" not in tensors or "lora_up.weight" not in tensors:
            unknown += [f"{name}.{suffix}" for suffix in tensors]
            continue
        alpha = tensors.get("alpha")
        layers[name] = LoraLayer(down=tensors["lora_down.weight"], up=tensors["lora_up.weight"],
                                 alpha=float(alpha.float().item()) if alpha is not None else None)
    return layers, unknown


def load_lora(path: Path, name: str | None = None) -> LoraNetwork:
    """Read a LoRA file (safetensors; pickles only through the allow-list loader) and parse it."""
    path = Path(path)
    layers, unknown = parse_kohya_state_dict(safe_load.load_state_dict(path))
    return LoraNetwork(name=name or path.stem, path=path, layers=layers, unknown_keys=tuple(unknown),
                       shorthash=lora_short_hash(path))


class LoraCache:
    """Parsed LoRA files, kept by path and modification time; the least recently used goes past `capacity`.

    Owned by whoever owns the loaded models (one per application), not global.
    """

    def __init__(self, capacity: int = 4):
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, int, int], LoraNetwork] = OrderedDict()

    def load(self, path: Path, name: str | None = None) -> LoraNetwork:
        path = Path(path).resolve()
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key in self._entries:
            self._entries.move_to_end(key)
            network = self._entries[key]
        else:
            network = load_lora(path)
            self._entries[key] = network
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        if name is not None and name != network.name:
            network = LoraNetwork(name, network.path, network.layers, network.unknown_keys, network.shorthash)
        return network

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------------------------- target layers

UNET, TEXT = "unet", "te"


@dataclass(frozen=True)
class LoraTarget:
    part: str  # UNET or TEXT: which multiplier applies
    weight: torch.nn.Parameter


def _kohya(path: str) -> str:
    return path.replace(".", "_")


@functools.lru_cache(maxsize=8)
def _original_unet_names(config_json: str) -> dict[str, str]:
    # unet_key_map builds a meta UNet; its result depends on the config alone, so it is computed once per config.
    return ldm_layout.unet_key_map(json.loads(config_json))


def _unet_targets(unet: torch.nn.Module) -> dict[str, LoraTarget]:
    config_json = json.dumps(dict(unet.config), sort_keys=True, default=str)
    to_original = _original_unet_names(config_json)
    targets: dict[str, LoraTarget] = {}
    for path, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        target = LoraTarget(UNET, module.weight)
        targets["lora_unet_" + _kohya(path)] = target
        original = to_original.get(path + ".weight")
        if original is not None:
            targets["lora_unet_" + _kohya(original.removesuffix(".weight"))] = target
    return targets


def _text_prefixes(model) -> list[str]:
    encoders = model.text_encoders
    if len(encoders) == 2:
        return ["lora_te1_", "lora_te2_"]
    # SDXL's refiner keeps only OpenCLIP-G, which SDXL files call te2.
    return ["lora_te2_"] if model.is_sdxl else ["lora_te_"]


def _text_targets(encoder: torch.nn.Module, prefix: str) -> dict[str, LoraTarget]:
    targets: dict[str, LoraTarget] = {}
    for path, module in encoder.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        target = LoraTarget(TEXT, module.weight)
        body = _kohya(path.removeprefix("text_model."))
        targets[prefix + body] = target
        targets[prefix + "text_model_" + body] = target
    return targets


def lora_targets(model) -> dict[str, LoraTarget]:
    """Every kohya layer name the model answers to -> the weight it adapts (StableDiffusionModel)."""
    targets = _unet_targets(model.unet)
    for prefix, encoder in zip(_text_prefixes(model), model.text_encoders):
        targets.update(_text_targets(encoder.model, prefix))
    return targets


# --------------------------------------------------------------------------------------------------- applying


@dataclass
class LoraApplyReport:
    """Per LoRA name: layers patched, keys that matched nothing in this model, layers whose shapes did not fit."""

    patched: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    mismatched: dict[str, int] = field(default_factory=dict)


LoraUse = tuple[LoraNetwork, float, float]  # (network, text-encoder weight, UNet weight)


def _collect_deltas(targets: Mapping[str, LoraTarget], loras: Sequence[LoraUse],
                    report: LoraApplyReport) -> dict[int, tuple[torch.nn.Parameter, list[Tensor]]]:
    deltas: dict[int, tuple[torch.nn.Parameter, list[Tensor]]] = {}
    for network, te_weight, unet_weight in loras:
        patched = unknown = mismatched = 0
        for name, layer in network.layers.items():
            target = targets.get(name)
            if target is None:
                unknown += 3 if layer.alpha is not None else 2  # the keys this layer came from
                continue
            multiplier = te_weight if target.part == TEXT else unet_weight
            if multiplier == 0:
                continue  # leaves the weight untouched, bit for bit
            weight = target.weight
            delta = layer.weight_delta(weight.shape, multiplier, weight.device)
            if delta is None:
                mismatched += 1
                continue
            deltas.setdefault(id(weight), (weight, []))[1].append(delta)
            patched += 1
        report.patched[network.name] = report.patched.get(network.name, 0) + patched
        report.unknown[network.name] = report.unknown.get(network.name, 0) + unknown + len(network.unknown_keys)
        report.mismatched[network.name] = report.mismatched.get(network.name, 0) + mismatched
    return deltas


@contextmanager
def apply_loras(model, loras: Sequence[LoraUse], targets: Mapping[str, LoraTarget] | None = None
                ) -> Iterator[LoraApplyReport]:
    """Within the block, each adapted weight W is W + sum of multiplier * scale * up @ down over the LoRAs.

    The sum is formed in float32 and cast to W's dtype once; on exit (also on error) every touched weight is
    copied back from a saved original, so the model is bit-identical to before. The caller holds the model's
    device lock for the whole block. `targets` (from `lora_targets(model)`) may be passed to skip rebuilding it.
    """
    report = LoraApplyReport()
    if not loras:
        yield report
        return
    targets = lora_targets(model) if targets is None else targets
    originals: list[tuple[torch.nn.Parameter, Tensor]] = []
    try:
        with torch.no_grad():
            for weight, deltas in _collect_deltas(targets, loras, report).values():
                originals.append((weight, weight.detach().clone()))
                patched = weight.detach().to(torch.float32, copy=True)
                for delta in deltas:
                    patched += delta
                weight.copy_(patched)
        yield report
    finally:
        with torch.no_grad():
            for weight, original in originals:
                weight.copy_(original)


# -------------------------------------------------------------------------------------------- from a prompt


@dataclass
class LoraPlan:
    """What a prompt's tags resolve to: the prompt without them, the networks to apply, and what went wrong."""

    prompt: str
    loras: list[LoraUse]
    not_found: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why the file could not be read
    hashes: dict[str, str] = field(default_factory=dict)  # name as written in the tag -> short hash

    @property
    def infotext(self) -> dict[str, str]:
        return {"Lora hashes": format_lora_hashes(self.hashes)} if self.hashes else {}


def plan_loras(prompt: str, files: Sequence[LoraFile], cache: LoraCache) -> LoraPlan:
    """Parse the tags of a prompt and load their files; unknown names and unreadable files do not stop it."""
    text, calls = parse_lora_tags(prompt)
    plan = LoraPlan(prompt=text, loras=[])
    for call in calls:
        file = find_lora(files, call.name)
        if file is None:
            plan.not_found.append(call.name)
            continue
        try:
            network = cache.load(file.path, name=call.name)
        except safe_load.ModelFileError as e:
            plan.failed[call.name] = str(e)
            continue
        plan.loras.append((network, call.te_weight, call.unet_weight))
        plan.hashes[call.name] = network.shorthash
    return plan
