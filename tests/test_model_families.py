"""Model family detection from checkpoint key layouts and from the shipped LDM yaml files."""

from pathlib import Path

import pytest

from modules.models.ldm_config import load_ldm_yaml
from modules.models.model_families import (
    FAMILIES,
    Family,
    FamilySpec,
    UnknownArchitectureError,
    build_registry,
    detect_family,
    family_from_ldm_yaml,
    prediction_type_from_ldm_yaml,
    sidecar_yaml_path,
)
from modules.io.paths import CONFIGS_DIR

# --- shape dicts laid out like real single-file checkpoints (a representative subset of their keys) -----


def unet_shapes(in_channels: int, model_channels: int, context_dim: int, adm_in_channels: int | None = None):
    prefix = "model.diffusion_model."
    shapes = {
        prefix + "input_blocks.0.0.weight": (model_channels, in_channels, 3, 3),
        prefix + "input_blocks.0.0.bias": (model_channels,),
        prefix + "time_embed.0.weight": (4 * model_channels, model_channels),
        prefix + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (2 * model_channels, context_dim),
        prefix + "middle_block.0.in_layers.2.weight": (4 * model_channels, 4 * model_channels, 3, 3),
        prefix + "out.2.weight": (4, model_channels, 3, 3),
    }
    if adm_in_channels is not None:
        shapes[prefix + "label_emb.0.0.weight"] = (4 * model_channels, adm_in_channels)
    return shapes


def vae_shapes(prefix="first_stage_model."):
    return {
        prefix + "encoder.conv_in.weight": (128, 3, 3, 3),
        prefix + "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        prefix + "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        prefix + "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        prefix + "decoder.conv_out.weight": (3, 128, 3, 3),
        prefix + "quant_conv.weight": (8, 8, 1, 1),
        prefix + "post_quant_conv.weight": (4, 4, 1, 1),
    }


def clip_l_shapes(prefix: str, layers: int = 12, width: int = 768):
    shapes = {
        prefix + "text_model.embeddings.token_embedding.weight": (49408, width),
        prefix + "text_model.embeddings.position_embedding.weight": (77, width),
        prefix + "text_model.embeddings.position_ids": (1, 77),
        prefix + "text_model.final_layer_norm.weight": (width,),
    }
    for i in range(layers):
        layer = f"{prefix}text_model.encoder.layers.{i}."
        shapes.update({
            layer + "self_attn.q_proj.weight": (width, width),
            layer + "self_attn.out_proj.weight": (width, width),
            layer + "layer_norm1.weight": (width,),
            layer + "mlp.fc1.weight": (4 * width, width),
            layer + "mlp.fc2.weight": (width, 4 * width),
        })
    return shapes


def open_clip_shapes(prefix: str, layers: int, width: int, projection_dim: int):
    shapes = {
        prefix + "token_embedding.weight": (49408, width),
        prefix + "positional_embedding": (77, width),
        prefix + "ln_final.weight": (width,),
        prefix + "ln_final.bias": (width,),
        prefix + "text_projection": (width, projection_dim),
        prefix + "logit_scale": (),
    }
    for i in range(layers):
        block = f"{prefix}transformer.resblocks.{i}."
        shapes.update({
            block + "attn.in_proj_weight": (3 * width, width),
            block + "attn.out_proj.weight": (width, width),
            block + "ln_1.weight": (width,),
            block + "mlp.c_fc.weight": (4 * width, width),
            block + "mlp.c_proj.weight": (width, 4 * width),
        })
    return shapes


def checkpoint_shapes(family: str):
    """Shapes of a real-size checkpoint of `family` (as detect_family sees a safetensors header)."""
    channels = 9 if family.endswith("inpaint") else 4
    if family.startswith("sd1"):
        return {**unet_shapes(channels, 320, 768), **vae_shapes(), **clip_l_shapes("cond_stage_model.transformer.")}
    if family.startswith("sd2"):
        return {**unet_shapes(channels, 320, 1024), **vae_shapes(),
                **open_clip_shapes("cond_stage_model.model.", 24, 1024, 1024)}
    if family == "sdxl_refiner":
        return {**unet_shapes(4, 384, 1280, 2560), **vae_shapes(),
                **open_clip_shapes("conditioner.embedders.0.model.", 32, 1280, 1280)}
    return {**unet_shapes(channels, 320, 2048, 2816), **vae_shapes(),
            **clip_l_shapes("conditioner.embedders.0.transformer."),
            **open_clip_shapes("conditioner.embedders.1.model.", 32, 1280, 1280)}


# --- detection from keys --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [f.value for f in Family])
def test_each_family_is_detected_from_its_key_layout(family):
    assert detect_family(checkpoint_shapes(family)) == Family(family)


def test_sd1_saved_by_old_transformers_without_text_model_level_is_sd1():
    shapes = {k.replace("transformer.text_model.", "transformer."): v for k, v in checkpoint_shapes("sd1").items()}
    assert detect_family(shapes) is Family.SD1


def test_detection_does_not_depend_on_the_vae_or_extra_keys():
    shapes = {k: v for k, v in checkpoint_shapes("sd2").items() if not k.startswith("first_stage_model.")}
    shapes["model_ema.decay"] = ()
    assert detect_family(shapes) is Family.SD2


def test_family_values_are_plain_strings():
    assert Family.SDXL == "sdxl"
    assert f"{Family.SD2_INPAINT}" == "sd2_inpaint" and str(Family.SD1) == "sd1"
    assert Family.SDXL_REFINER.startswith("sdxl")


LORA = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (8, 320, 1, 1),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 8, 1, 1),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": (),
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 768),
}
VAE_ONLY = {k.removeprefix("first_stage_model."): v for k, v in vae_shapes().items()}
SD3 = {
    "model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2),
    "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536),
    "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
}
FLUX = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "img_in.weight": (3072, 64)}


@pytest.mark.parametrize("shapes, found", [
    (LORA, "a LoRA/LyCORIS file"),
    (VAE_ONLY, "a standalone VAE"),
    (SD3, "its diffusion model is a transformer"),
    (FLUX, "a Flux model"),
    ({}, "an empty state dict"),
    ({"emb_params": (2, 768)}, "a textual-inversion embedding"),
    ({"string_to_param.*": (2, 768), "string_to_token.*": (265,)}, "a textual-inversion embedding"),
    ({"clip_l": (2, 768), "clip_g": (2, 1280)}, "a textual-inversion embedding"),
])
def test_files_that_are_not_sd_checkpoints_are_refused_saying_what_they_are(shapes, found):
    with pytest.raises(UnknownArchitectureError) as error:
        detect_family(shapes)
    message = str(error.value)
    assert found in message
    assert "model.diffusion_model.input_blocks.0.0.weight" in message  # what was expected


def test_unsupported_unet_input_channels_are_named():
    shapes = checkpoint_shapes("sd1")
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (320, 8, 3, 3)  # instruct-pix2pix
    with pytest.raises(UnknownArchitectureError, match="8 input channels"):
        detect_family(shapes)


def test_unet_without_any_known_text_encoder_is_refused():
    shapes = {**unet_shapes(4, 320, 768), **vae_shapes()}
    with pytest.raises(UnknownArchitectureError, match="no text encoder"):
        detect_family(shapes)


def test_unclip_is_refused_rather_than_taken_for_sd2():
    shapes = {**checkpoint_shapes("sd2"), **unet_shapes(4, 320, 1024, adm_in_channels=1024)}
    with pytest.raises(UnknownArchitectureError, match="unCLIP"):
        detect_family(shapes)


# --- registry ---------------------------------------------------------------------------------------------

def test_registry_has_every_family_with_its_shipped_yaml():
    assert set(FAMILIES) == set(Family)
    for family, spec in FAMILIES.items():
        assert spec.family is family
        assert (CONFIGS_DIR / spec.config_file).is_file()
        if spec.v_prediction_yaml:
            assert (CONFIGS_DIR / spec.v_prediction_yaml).is_file()


def test_registry_values():
    assert [FAMILIES[f].image_size for f in Family] == [512, 512, 512, 512, 1024, 1024, 1024]
    assert FAMILIES[Family.SD2].native_image_size("v_prediction") == 768
    assert FAMILIES[Family.SD2].yaml_name("v_prediction") == "v2-inference-v.yaml"
    assert FAMILIES[Family.SD1].native_image_size("v_prediction") == 512
    assert [f for f in Family if FAMILIES[f].needs_prediction_probe] == [Family.SD2]
    assert FAMILIES[Family.SDXL].latent_scale_factor == 0.13025
    assert FAMILIES[Family.SD1_INPAINT].latent_scale_factor == 0.18215
    assert {f for f in Family if FAMILIES[f].is_inpaint} == {Family.SD1_INPAINT, Family.SD2_INPAINT,
                                                             Family.SDXL_INPAINT}


def test_registry_refuses_duplicates():
    spec = FamilySpec(Family.SD1, "v1-inference.yaml", 512, 0.18215)
    with pytest.raises(ValueError, match="'sd1' is registered twice"):
        build_registry([spec, spec])


def test_registry_cannot_be_changed():
    with pytest.raises(TypeError):
        FAMILIES[Family.SD1] = FAMILIES[Family.SD2]  # type: ignore[index]


# --- sidecar yaml -----------------------------------------------------------------------------------------

def test_sidecar_yaml_is_the_same_name_with_yaml(tmp_path: Path):
    checkpoint = tmp_path / "my.model.v2.safetensors"
    checkpoint.write_bytes(b"")
    assert sidecar_yaml_path(checkpoint) is None
    (tmp_path / "my.model.v2.yaml").write_text("model: {}\n")
    assert sidecar_yaml_path(checkpoint) == tmp_path / "my.model.v2.yaml"
    assert sidecar_yaml_path(str(tmp_path / "my.model.v2.ckpt")) == tmp_path / "my.model.v2.yaml"
    (tmp_path / "other.yaml").mkdir()
    assert sidecar_yaml_path(tmp_path / "other.safetensors") is None  # a folder is not a config


# --- detection from yaml ----------------------------------------------------------------------------------

@pytest.mark.parametrize("file_name, family, prediction", [
    ("v1-inference.yaml", Family.SD1, "epsilon"),
    ("v1-inpainting-inference.yaml", Family.SD1_INPAINT, "epsilon"),
    ("v2-inference.yaml", Family.SD2, "epsilon"),
    ("v2-inference-v.yaml", Family.SD2, "v_prediction"),
    ("v2-inpainting-inference.yaml", Family.SD2_INPAINT, "epsilon"),
    ("sd_xl_base.yaml", Family.SDXL, "epsilon"),
    ("sd_xl_inpaint.yaml", Family.SDXL_INPAINT, "epsilon"),
    ("sd_xl_refiner.yaml", Family.SDXL_REFINER, "epsilon"),
])
def test_shipped_yaml_gives_its_family_and_prediction(file_name, family, prediction):
    cfg = load_ldm_yaml(CONFIGS_DIR / file_name)
    kind = family_from_ldm_yaml(cfg)
    assert kind == (family, prediction)
    assert kind.family is family and kind.prediction_type == prediction


def test_every_family_default_yaml_describes_that_family():
    for family, spec in FAMILIES.items():
        assert family_from_ldm_yaml(load_ldm_yaml(CONFIGS_DIR / spec.config_file)).family is family


def test_shipped_yaml_public_values():
    v1 = load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml")["model"]["params"]
    assert (v1["linear_start"], v1["linear_end"], v1["timesteps"], v1["scale_factor"]) == (0.00085, 0.012, 1000,
                                                                                          0.18215)
    assert v1["unet_config"]["params"]["attention_resolutions"] == [4, 2, 1]
    assert v1["first_stage_config"]["params"]["ddconfig"]["ch_mult"] == [1, 2, 4, 4]
    xl = load_ldm_yaml(CONFIGS_DIR / "sd_xl_base.yaml")["model"]["params"]
    assert xl["scale_factor"] == 0.13025
    assert xl["network_config"]["params"]["transformer_depth"] == [1, 2, 10]
    assert [m["target"].rsplit(".", 1)[1] for m in xl["conditioner_config"]["params"]["emb_models"][:2]] == [
        "FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder2"]


def test_sgm_v_prediction_is_read_from_the_denoiser_scaling():
    cfg = load_ldm_yaml(CONFIGS_DIR / "sd_xl_base.yaml")
    scaling = cfg["model"]["params"]["denoiser_config"]["params"]["scaling_config"]
    scaling["target"] = "sgm.modules.diffusionmodules.denoiser_scaling.VScaling"
    assert prediction_type_from_ldm_yaml(cfg) == "v_prediction"
    assert family_from_ldm_yaml(cfg) == (Family.SDXL, "v_prediction")


def test_yaml_family_rules_without_text_encoder_targets():
    cfg = load_ldm_yaml(CONFIGS_DIR / "v2-inference.yaml")
    del cfg["model"]["params"]["cond_stage_config"]
    assert family_from_ldm_yaml(cfg).family is Family.SD2  # linear transformer, context 1024
    refiner = load_ldm_yaml(CONFIGS_DIR / "sd_xl_refiner.yaml")
    del refiner["model"]["params"]["conditioner_config"]
    assert family_from_ldm_yaml(refiner).family is Family.SDXL_REFINER  # context 1280


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["unet_config"]["params"].update(in_channels=8), "8 input channels"),
    (lambda p: p.update(parameterization="x0"), "unsupported parameterization"),
    (lambda p: p["cond_stage_config"].update(target="modules.xlmr.BertSeriesModelWithTransformation"),
     "unsupported text encoder"),
    (lambda p: p.pop("unet_config"), "neither 'unet_config' nor 'network_config'"),
])
def test_unsupported_yaml_is_refused(edit, message):
    cfg = load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml")
    edit(cfg["model"]["params"])
    with pytest.raises(UnknownArchitectureError, match=message):
        family_from_ldm_yaml(cfg)


def test_yaml_without_model_params_is_refused():
    with pytest.raises(UnknownArchitectureError, match="model.params"):
        family_from_ldm_yaml({"data": {}})
