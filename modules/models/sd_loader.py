"""Building diffusers/transformers modules from an original single-file checkpoint, offline.

    file --(safe_load)--> state dict --(model_families)--> family + LDM yaml
         --(ldm_config)--> diffusers configs --(ldm_layout)--> diffusers keys --> modules

A `<checkpoint>.yaml` beside the file (an original LDM config) overrides detection and may give
non-standard sizes; otherwise the family's standard yaml from configs/ is used. Every config and
tokenizer file comes from the repository, so no code path here can reach a model hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from modules.models import ldm_layout
from modules.models import memory_modes
from modules.models import safe_load
from modules.models.checkpoints import CheckpointInfo
from modules.models.devices import DevicePolicy
from modules.models.ldm_config import ComponentConfigs, TextEncoderConfig, build_component_configs, load_ldm_yaml
from modules.models.model_families import FAMILIES, detect_family, sidecar_yaml_path
from modules.io.paths import CONFIGS_DIR
from modules.sampling.denoisers import DiscreteSchedule, scaled_linear_alphas_cumprod
from modules.models.sd_model import StableDiffusionModel, TextEncoder


class CheckpointLoadError(safe_load.ModelFileError):
    pass


def _ldm_yaml_for(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict:
    sidecar = sidecar_yaml_path(path)
    if sidecar is not None:
        return load_ldm_yaml(sidecar)
    return load_ldm_yaml(CONFIGS_DIR / FAMILIES[detect_family(shapes)].config_file)


def inspect_checkpoint(path: Path) -> ComponentConfigs:
    """What a checkpoint is, without building it (from the header alone for safetensors)."""
    shapes = safe_load.read_tensor_shapes(path)
    try:
        return build_component_configs(_ldm_yaml_for(path, shapes), shapes)
    except (ValueError, KeyError) as e:
        raise CheckpointLoadError(f"{path}: {e}") from e


def load_checkpoint(info: CheckpointInfo, policy: DevicePolicy, vae_path: Path | None = None) -> StableDiffusionModel:
    path = Path(info.path)
    state_dict = safe_load.load_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    sidecar = sidecar_yaml_path(path)
    try:
        configs = build_component_configs(_ldm_yaml_for(path, shapes), shapes)
    except (ValueError, KeyError) as e:
        raise CheckpointLoadError(f"{path}: {e}") from e

    parts = ldm_layout.split_original(state_dict)
    del state_dict
    try:
        unet = _build_unet(configs, parts["unet"])
        vae = _build_vae(configs, _vae_weights(parts["vae"], vae_path))
        encoders = [_build_text_encoder(tec, parts) for tec in configs.text_encoders]
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointLoadError(f"{path}: weights do not fit the {configs.family.value} architecture "
                                  f"({_short(e)})") from e
    # In the low-memory modes weights start in CPU memory and visit the GPU when they run.
    home = policy.device if policy.memory_mode == "normal" else torch.device("cpu")
    for encoder in encoders:
        encoder.model.to(home, policy.text_encoder_dtype).eval()

    spec = FAMILIES[configs.family]
    model = StableDiffusionModel(
        checkpoint=info,
        family=configs.family.value,
        prediction=configs.prediction_type,
        unet=_to(unet, home, policy.unet_dtype),
        vae=_to(vae, home, policy.vae_dtype),
        text_encoders=encoders,
        schedule=DiscreteSchedule(scaled_linear_alphas_cumprod(
            configs.scheduler["beta_start"], configs.scheduler["beta_end"], configs.scheduler["num_train_timesteps"])),
        scale_factor=configs.scale_factor,
        native_size=configs.image_size,
        policy=policy,
        vae_name=vae_path.name if vae_path else None,
    )
    memory_modes.apply(model, policy.memory_mode)
    if sidecar is None and spec.needs_prediction_probe:
        model.prediction = probe_prediction(model)
        model.native_size = spec.native_image_size(model.prediction)
    return model


def _to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # torch's own .to(): diffusers' override warns about fp32-only modules that these models do not have.
    return torch.nn.Module.to(module, device, dtype).eval()


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def _empty_weights():
    """Build modules without allocating or initialising parameters (the checkpoint replaces them);
    buffers that are not saved in checkpoints (position ids) are still made for real."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _assign(module: torch.nn.Module, weights: dict[str, torch.Tensor], ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load weights into a module built with empty weights; every parameter must be present."""
    expected = module.state_dict()
    weights = {k: v for k, v in weights.items() if k in expected or not k.startswith(ignore_prefixes)}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise KeyError(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                       f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    module.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True, assign=True)


def _build_unet(configs: ComponentConfigs, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    with _empty_weights():
        unet = UNet2DConditionModel.from_config(configs.unet)
    _assign(unet, ldm_layout.unet_to_diffusers(weights, configs.unet))
    return unet


def _vae_weights(checkpoint_vae: dict[str, torch.Tensor], vae_path: Path | None) -> dict[str, torch.Tensor]:
    if vae_path is None:
        return checkpoint_vae
    loaded = safe_load.load_state_dict(vae_path)
    # VAE files come bare (encoder.*, decoder.*) or as a checkpoint's first_stage_model.* part.
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in loaded):
        loaded = {k[len(prefix):]: v for k, v in loaded.items() if k.startswith(prefix)}
    return {k: v for k, v in loaded.items() if not k.startswith(("loss.", "model_ema."))}


def _build_vae(configs: ComponentConfigs, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with _empty_weights():
        vae = AutoencoderKL.from_config(configs.vae)
    _assign(vae, ldm_layout.vae_to_diffusers(weights, configs.vae))
    # Every SiLU in the decoder acts on a fresh GroupNorm output, so it may overwrite it: one
    # full-resolution activation less at the decoder's peak, the largest transient of a txt2img job.
    for module in vae.decoder.modules():
        if isinstance(module, torch.nn.SiLU):
            module.inplace = True
    return vae


def _build_text_encoder(tec: TextEncoderConfig, parts: dict) -> TextEncoder:
    import transformers

    model_class = getattr(transformers, tec.model_class)
    config = transformers.CLIPTextConfig(**tec.config)
    with _empty_weights():
        model = model_class(config)
    if tec.kind == "clip_l":
        weights = ldm_layout.clip_text_to_diffusers(parts["clip_l"])
    else:
        # SD 2.x files carry an OpenCLIP projection that SD never uses; only SDXL's encoder has one.
        weights = ldm_layout.open_clip_text_to_diffusers(
            parts["open_clip"], with_projection=tec.model_class == "CLIPTextModelWithProjection")
    _assign(model, weights)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tec.tokenizer_dir), local_files_only=True)
    return TextEncoder(tec.kind, model, tokenizer, tec.output_layer, tec.final_layer_norm)


@torch.no_grad()
def probe_prediction(model: StableDiffusionModel) -> str:
    """Tell epsilon from v-prediction by one UNet call, as AUTOMATIC1111 does for SD 2.x files.

    A constant latent of 0.5 at the last timestep with an empty context: an epsilon model answers
    close to its input, a v model far below it (mean of out - x under -1).
    """
    device = model.policy.device
    x = torch.full((1, model.unet_in_channels, 8, 8), 0.5, device=device)
    context = torch.zeros(1, 77, model.unet.config.cross_attention_dim, device=device)
    out = model.unet_fn(x, torch.full((1,), 999.0, device=device), context=context)
    return "v_prediction" if (out - x[:, : out.shape[1]]).mean().item() < -1 else "epsilon"
