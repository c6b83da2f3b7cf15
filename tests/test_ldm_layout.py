"""Original single-file key layout <-> diffusers/transformers modules, for every Stable Diffusion family."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
import yaml
from torch import Tensor

from modules.models import ldm_layout
from tests.tiny_models import (
    FAMILIES,
    FAMILY_LAYOUT,
    original_text_parts,
    save_checkpoint,
    tiny_diffusers_components,
    tiny_ldm_yaml,
    tiny_original_state_dict,
    tiny_text_specs,
)

SD15_UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8,
}
SDXL_UNET_CONFIG = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 2048, "attention_head_dim": (5, 10, 20), "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}

# Names as they appear in real single files (for the real block counts these are the same indices, since the
# tiny UNets keep the first levels' layout).
REAL_KEYS = {
    "sd1": [
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
        "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.out_layers.0.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.1.proj_out.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.norm_out.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "first_stage_model.decoder.up.0.block.2.conv1.weight",
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ],
    "sd2": [
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.2.mlp.c_proj.bias",
        "cond_stage_model.model.ln_final.weight",
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.token_embedding.weight",
    ],
    "sdxl": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.1.ff.net.0.proj.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.ln_final.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
    ],
    "sdxl_refiner": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "conditioner.embedders.0.model.text_projection",
        "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.0.model.ln_final.weight",
    ],
}


@pytest.fixture(scope="module")
def family_models() -> Callable[[str], dict]:
    built: dict[str, dict] = {}

    def get(family: str) -> dict:
        if family not in built:
            built[family] = tiny_diffusers_components(family)
        return built[family]

    return get


def assert_same_tensors(actual: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, different[:5]


def text_to_diffusers(family: str, kind: str, part: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if kind == "clip":
        return ldm_layout.clip_text_to_diffusers(part)
    # SD2 files carry a projection its CLIPTextModel does not have.
    return ldm_layout.open_clip_text_to_diffusers(part, with_projection=FAMILY_LAYOUT[family] != "sd2")


def text_part_name(kind: str) -> str:
    return "clip_l" if kind == "clip" else "open_clip"


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_to_original_and_back_is_exact(family, family_models):
    models = family_models(family)
    unet, vae = models["unet"], models["vae"]
    unet_sd, vae_sd = unet.state_dict(), vae.state_dict()

    unet_back = ldm_layout.unet_to_diffusers(ldm_layout.unet_to_original(unet_sd, unet.config), unet.config)
    vae_back = ldm_layout.vae_to_diffusers(ldm_layout.vae_to_original(vae_sd, vae.config), vae.config)
    assert_same_tensors(unet_back, unet_sd)
    assert_same_tensors(vae_back, vae_sd)
    for spec, encoder in zip(tiny_text_specs(family), models["text_encoders"], strict=True):
        sd = encoder.state_dict()
        if spec.kind == "clip":
            back = ldm_layout.clip_text_to_diffusers(ldm_layout.clip_text_to_original(sd))
        else:
            back = ldm_layout.open_clip_text_to_diffusers(ldm_layout.open_clip_text_to_original(sd))
        assert_same_tensors(back, sd)


@pytest.mark.parametrize("family", FAMILIES)
def test_original_to_diffusers_and_back_is_exact(family, family_models):
    config = family_models(family)
    original = tiny_original_state_dict(family, realistic_extras=False)
    parts = ldm_layout.split_original(original)
    assert parts["other"] == {}

    texts = {}
    for spec in tiny_text_specs(family):
        name = text_part_name(spec.kind)
        diffusers_sd = text_to_diffusers(family, spec.kind, parts[name])
        to_original = ldm_layout.clip_text_to_original if spec.kind == "clip" else ldm_layout.open_clip_text_to_original
        texts[name] = to_original(diffusers_sd)
    unet_config, vae_config = config["unet"].config, config["vae"].config
    rebuilt = ldm_layout.join_original(
        unet=ldm_layout.unet_to_original(ldm_layout.unet_to_diffusers(parts["unet"], unet_config), unet_config),
        vae=ldm_layout.vae_to_original(ldm_layout.vae_to_diffusers(parts["vae"], vae_config), vae_config),
        layout=FAMILY_LAYOUT[family],
        **texts,
    )
    assert_same_tensors(rebuilt, original)


@pytest.mark.parametrize("family", FAMILIES)
def test_original_file_loads_strictly_into_diffusers_modules(family, family_models):
    expected = family_models(family)
    original = tiny_original_state_dict(family)  # with position_ids, logit_scale, schedule buffers, ...
    parts = ldm_layout.split_original(original)
    fresh = tiny_diffusers_components(family, seed=1)

    fresh["unet"].load_state_dict(ldm_layout.unet_to_diffusers(parts["unet"], fresh["unet"].config), strict=True)
    fresh["vae"].load_state_dict(ldm_layout.vae_to_diffusers(parts["vae"], fresh["vae"].config), strict=True)
    assert_same_tensors(fresh["unet"].state_dict(), expected["unet"].state_dict())
    assert_same_tensors(fresh["vae"].state_dict(), expected["vae"].state_dict())
    for spec, encoder, reference in zip(
        tiny_text_specs(family), fresh["text_encoders"], expected["text_encoders"], strict=True
    ):
        encoder.load_state_dict(text_to_diffusers(family, spec.kind, parts[text_part_name(spec.kind)]), strict=True)
        assert_same_tensors(encoder.state_dict(), reference.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_original_key_names_match_real_files(family):
    original = tiny_original_state_dict(family)
    layout = FAMILY_LAYOUT[family]
    missing = [k for k in REAL_KEYS[layout] if k not in original]
    assert not missing
    assert ldm_layout.original_layout(original) == layout

    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert original["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == (9 if family == "sd1_inpaint" else 4)
    # SD1 keeps 1x1-conv transformer projections; SD2 and SDXL use linear ones.
    proj_in = original["model.diffusion_model.middle_block.1.proj_in.weight"]
    assert proj_in.ndim == (4 if layout == "sd1" else 2)
    if family == "sdxl":
        # OpenCLIP applies x @ P, so P is [width, projection_dim].
        assert original["conditioner.embedders.1.model.text_projection"].shape == (64, 40)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_result_as_diffusers_own_converters(family, family_models):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    models = family_models(family)
    original = tiny_original_state_dict(family)
    parts = ldm_layout.split_original(original)
    unet_config, vae_config = dict(models["unet"].config), dict(models["vae"].config)

    assert_same_tensors(ldm_layout.unet_to_diffusers(parts["unet"], unet_config),
                        convert_ldm_unet_checkpoint(original, unet_config))
    assert_same_tensors(ldm_layout.vae_to_diffusers(parts["vae"], vae_config),
                        convert_ldm_vae_checkpoint(original, vae_config))

    def unprefixed(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # diffusers' converters write "text_model." even where the installed CLIPTextModel has none.
        return {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}

    prefixes = ldm_layout.TEXT_PREFIXES[FAMILY_LAYOUT[family]]
    for spec, encoder in zip(tiny_text_specs(family), models["text_encoders"], strict=True):
        name = text_part_name(spec.kind)
        ours = unprefixed(text_to_diffusers(family, spec.kind, parts[name]))
        if spec.kind == "clip":
            theirs = convert_ldm_clip_checkpoint(original)
        else:
            theirs = convert_open_clip_checkpoint(encoder, original, prefix=prefixes[name])
        assert_same_tensors(ours, unprefixed(theirs))


def test_full_size_sd15_key_maps():
    unet_map = ldm_layout.unet_key_map(SD15_UNET_CONFIG)  # meta-device model: no weights allocated
    assert len(unet_map) == 686
    assert unet_map["down_blocks.0.downsamplers.0.conv.weight"] == "input_blocks.3.0.op.weight"
    assert unet_map["down_blocks.3.resnets.1.conv2.weight"] == "input_blocks.11.0.out_layers.3.weight"
    assert unet_map["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.1.conv.weight"
    assert unet_map["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert unet_map["up_blocks.3.attentions.2.proj_out.weight"] == "output_blocks.11.1.proj_out.weight"
    assert unet_map["mid_block.resnets.1.time_emb_proj.bias"] == "middle_block.2.emb_layers.1.bias"

    vae_map = ldm_layout.vae_key_map(SD_VAE_CONFIG)
    assert len(vae_map) == 248
    assert vae_map["encoder.mid_block.attentions.0.to_q.weight"] == "encoder.mid.attn_1.q.weight"
    assert vae_map["decoder.up_blocks.0.upsamplers.0.conv.weight"] == "decoder.up.3.upsample.conv.weight"
    assert vae_map["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"] == "decoder.up.0.block.0.nin_shortcut.weight"


def test_full_size_sdxl_unet_key_map():
    unet_map = ldm_layout.unet_key_map(SDXL_UNET_CONFIG)
    assert len(unet_map) == 1680
    assert unet_map["add_embedding.linear_2.weight"] == "label_emb.0.2.weight"
    assert unet_map["down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_v.weight"] == (
        "input_blocks.8.1.transformer_blocks.9.attn2.to_v.weight")
    assert unet_map["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"


def test_split_reports_keys_outside_the_models():
    parts = ldm_layout.split_original(tiny_original_state_dict("sd1"))
    assert {"betas", "alphas_cumprod", "model_ema.decay", "model_ema.num_updates"} <= set(parts["other"])
    assert "text_model.embeddings.position_ids" in parts["clip_l"]
    assert not any(k.endswith("position_ids") for k in ldm_layout.clip_text_to_diffusers(parts["clip_l"]))
    assert parts["open_clip"] == {}


def test_join_checks_the_text_encoders_of_the_layout():
    parts = ldm_layout.split_original(tiny_original_state_dict("sd1", realistic_extras=False))
    with pytest.raises(ldm_layout.LayoutError):
        ldm_layout.join_original(unet=parts["unet"], vae=parts["vae"], clip_l=parts["clip_l"], layout="sd2")
    with pytest.raises(ldm_layout.LayoutError):
        ldm_layout.join_original(unet=parts["unet"], vae=parts["vae"], layout="sd1")
    with pytest.raises(ldm_layout.LayoutError):
        ldm_layout.join_original(unet=parts["unet"], vae=parts["vae"], clip_l=parts["clip_l"], layout="sd3")


def test_unknown_keys_are_refused(family_models):
    unet = family_models("sd1")["unet"]
    original = ldm_layout.unet_to_original(unet.state_dict(), unet.config)
    original["input_blocks.99.0.in_layers.0.weight"] = torch.zeros(1)
    with pytest.raises(ldm_layout.LayoutError, match="input_blocks.99"):
        ldm_layout.unet_to_diffusers(original, unet.config)
    with pytest.raises(ldm_layout.LayoutError):
        ldm_layout.open_clip_text_to_diffusers({"transformer.resblocks.0.attn.surprise": torch.zeros(1)})


def test_text_converters_accept_the_longer_original_forms(family_models):
    models = family_models("sdxl")
    clip_l, bigg = (encoder.state_dict() for encoder in models["text_encoders"])
    original_l = ldm_layout.clip_text_to_original(clip_l)
    # "transformer.text_model.*" and the oldest SD1 files' form without "text_model."
    longer = {"transformer." + k: v for k, v in original_l.items()}
    oldest = {k.removeprefix("text_model."): v for k, v in original_l.items()}
    assert_same_tensors(ldm_layout.clip_text_to_diffusers(longer), clip_l)
    assert_same_tensors(ldm_layout.clip_text_to_diffusers(oldest), clip_l)
    with_model_prefix = {"model." + k: v for k, v in ldm_layout.open_clip_text_to_original(bigg).items()}
    assert_same_tensors(ldm_layout.open_clip_text_to_diffusers(with_model_prefix), bigg)


def test_open_clip_num_layers_keeps_the_first_blocks(family_models):
    from transformers import CLIPTextModel

    encoder = family_models("sd2_v")["text_encoders"][0]
    original = ldm_layout.open_clip_text_to_original(encoder.state_dict())
    assert "transformer.resblocks.2.attn.in_proj_weight" in original
    shorter = ldm_layout.open_clip_text_to_diffusers(original, num_layers=2)
    config = encoder.config.to_dict() | {"num_hidden_layers": 2}
    two_layers = CLIPTextModel(type(encoder.config).from_dict(config))
    two_layers.load_state_dict(shorter, strict=True)
    kept = {k: v for k, v in encoder.state_dict().items() if ".layers.2." not in k}
    assert_same_tensors(two_layers.state_dict(), kept)


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_save_checkpoint_writes_loadable_files(fmt, tmp_path):
    original = tiny_original_state_dict("sd1")
    path = save_checkpoint(original, tmp_path / f"tiny.{fmt}", fmt=fmt)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        loaded = load_file(str(path))
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert_same_tensors(loaded, original)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_ldm_yaml_describes_the_built_models(family, family_models):
    models = family_models(family)
    unet, vae = models["unet"], models["vae"]
    model = yaml.safe_load(tiny_ldm_yaml(family))["model"]
    params = model["params"]
    sdxl = family.startswith("sdxl")
    net = params["network_config" if sdxl else "unet_config"]["params"]

    assert net["in_channels"] == unet.conv_in.in_channels
    assert net["model_channels"] == unet.conv_in.out_channels
    level_channels = [b.resnets[0].out_channels for b in unet.down_blocks]
    assert [net["model_channels"] * m for m in net["channel_mult"]] == level_channels
    assert all(len(b.resnets) == net["num_res_blocks"] for b in unet.down_blocks)
    attention_levels = [2**i for i, b in enumerate(unet.down_blocks) if getattr(b, "attentions", None)]
    assert net["attention_resolutions"] == attention_levels
    depth = net["transformer_depth"]
    for level, block in enumerate(unet.down_blocks):
        for attention in getattr(block, "attentions", []):
            assert len(attention.transformer_blocks) == (depth[level] if isinstance(depth, list) else depth)
            attn2 = attention.transformer_blocks[0].attn2
            assert attn2.to_k.in_features == net["context_dim"]
            if net.get("use_linear_in_transformer"):
                assert attention.proj_in.weight.ndim == 2
                assert attn2.inner_dim // attn2.heads == net["num_head_channels"]
            else:
                assert attention.proj_in.weight.ndim == 4
                assert attn2.heads == net["num_heads"]
    if sdxl:
        assert net["adm_in_channels"] == unet.add_embedding.linear_1.in_features
        assert net["num_classes"] == "sequential"
    assert params.get("parameterization", "eps") == ("v" if family == "sd2_v" else "eps")
    assert params["scale_factor"] == vae.config.scaling_factor

    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    assert ddconfig["ch"] == vae.encoder.conv_in.out_channels
    vae_channels = [b.resnets[0].out_channels for b in vae.encoder.down_blocks]
    assert [ddconfig["ch"] * m for m in ddconfig["ch_mult"]] == vae_channels
    assert ddconfig["z_channels"] == vae.config.latent_channels == params["first_stage_config"]["params"]["embed_dim"]

    if sdxl:
        emb_models = params["conditioner_config"]["params"]["emb_models"]
        text_params = [m["params"] for m in emb_models if m["input_key"] == "txt"]
        time_dims = {m["params"]["outdim"] for m in emb_models if m["input_key"] != "txt"}
        assert time_dims == {unet.config.addition_time_embed_dim}
    else:
        text_params = [params["cond_stage_config"]["params"]]
    assert len(text_params) == len(models["text_encoders"])
    for described, encoder in zip(text_params, models["text_encoders"], strict=True):
        config = encoder.config
        assert described["width"] == encoder.get_input_embeddings().weight.shape[1]
        assert described["vocab_size"] == encoder.get_input_embeddings().weight.shape[0]
        assert described["layers"] == config.num_hidden_layers
        assert described["heads"] == config.num_attention_heads
        assert described["max_length"] == config.max_position_embeddings
        assert described["act"] == config.hidden_act
        assert config.intermediate_size == 4 * described["width"]
        if "projection_dim" in described:
            assert described["projection_dim"] == encoder.text_projection.out_features


def test_original_text_parts_use_the_family_components(family_models):
    models = family_models("sdxl")
    parts = original_text_parts("sdxl", models["text_encoders"])
    assert set(parts) == {"clip_l", "open_clip"}
    assert "text_projection" in parts["open_clip"]
