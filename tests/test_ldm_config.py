"""LDM yaml + checkpoint shapes -> diffusers/transformers configs, checked against the public configs of the
real models and by building the modules (full size on the meta device, tiny ones for real)."""

import copy
import importlib.util
import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from modules.models.ldm_config import (
    TOKENIZERS_DIR,
    build_component_configs,
    load_ldm_yaml,
    standard_heads,
)
from modules.models.model_families import Family
from modules.io.paths import CONFIGS_DIR, INSTALL_DIR
from test_model_families import checkpoint_shapes

MODEL_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}


def configs_for(yaml_name: str, family: str):
    return build_component_configs(load_ldm_yaml(CONFIGS_DIR / yaml_name), checkpoint_shapes(family))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_text_encoder(encoder_config):
    with torch.device("meta"):
        return MODEL_CLASSES[encoder_config.model_class](CLIPTextConfig(**encoder_config.config))


# --- full-size models, against the public diffusers/transformers configs ----------------------------------

def test_sd15_configs_match_the_public_ones():
    configs = configs_for("v1-inference.yaml", "sd1")
    unet = configs.unet
    assert configs.family is Family.SD1 and configs.prediction_type == "epsilon"
    assert unet["block_out_channels"] == (320, 640, 1280, 1280)
    assert unet["down_block_types"] == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert unet["up_block_types"] == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert (unet["in_channels"], unet["out_channels"], unet["layers_per_block"]) == (4, 4, 2)
    assert (unet["cross_attention_dim"], unet["attention_head_dim"], unet["use_linear_projection"]) == (768, 8, False)
    assert unet["sample_size"] == 64 and unet["addition_embed_type"] is None
    assert configs.vae["block_out_channels"] == (128, 256, 512, 512)
    assert (configs.vae["latent_channels"], configs.vae["layers_per_block"], configs.vae["scaling_factor"]) == (
        4, 2, 0.18215)
    assert configs.scheduler == {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                 "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
    assert (configs.image_size, configs.scale_factor) == (512, 0.18215)
    (clip_l,) = configs.text_encoders
    assert (clip_l.kind, clip_l.model_class, clip_l.key_prefix) == (
        "clip_l", "CLIPTextModel", "cond_stage_model.transformer.text_model.")
    assert clip_l.config == {
        "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
        "projection_dim": 768, "pad_token_id": 49407, "bos_token_id": 49406, "eos_token_id": 49407}
    assert (clip_l.output_layer, clip_l.final_layer_norm) == ("last", True)
    assert clip_l.tokenizer_dir == CONFIGS_DIR / "tokenizers" / "clip"


def test_sd15_modules_have_the_real_parameter_counts():
    configs = configs_for("v1-inference.yaml", "sd1")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs.unet)
        vae = AutoencoderKL.from_config(configs.vae)
    assert parameter_count(unet) == 859_520_964
    assert parameter_count(vae) == 83_653_863
    assert parameter_count(meta_text_encoder(configs.text_encoders[0])) == 123_060_480


def test_sd2_v_configs_match_the_public_ones():
    configs = configs_for("v2-inference-v.yaml", "sd2")
    unet = configs.unet
    assert configs.family is Family.SD2 and configs.prediction_type == "v_prediction"
    assert unet["attention_head_dim"] == (5, 10, 20, 20)
    assert unet["use_linear_projection"] is True and unet["cross_attention_dim"] == 1024
    assert unet["sample_size"] == 96 and configs.image_size == 768
    assert configs.scheduler["prediction_type"] == "v_prediction"
    (open_clip,) = configs.text_encoders
    assert (open_clip.kind, open_clip.model_class, open_clip.key_prefix) == (
        "open_clip", "CLIPTextModel", "cond_stage_model.model.")
    config = open_clip.config
    assert (config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]) == (1024, 4096, 16)
    assert (config["num_hidden_layers"], config["hidden_act"], config["pad_token_id"]) == (24, "gelu", 0)
    # ldm's FrozenOpenCLIPEmbedder(layer="penultimate") stops one layer early, then applies ln_final.
    assert (open_clip.output_layer, open_clip.final_layer_norm) == ("penultimate", True)
    assert open_clip.tokenizer_dir == CONFIGS_DIR / "tokenizers" / "open_clip"
    with torch.device("meta"):
        assert parameter_count(UNet2DConditionModel.from_config(unet)) == 865_910_724


def test_sd2_base_is_512_epsilon():
    configs = configs_for("v2-inference.yaml", "sd2")
    assert (configs.prediction_type, configs.image_size, configs.unet["sample_size"]) == ("epsilon", 512, 64)


@pytest.mark.parametrize("yaml_name, family", [("v1-inpainting-inference.yaml", "sd1_inpaint"),
                                               ("v2-inpainting-inference.yaml", "sd2_inpaint"),
                                               ("sd_xl_inpaint.yaml", "sdxl_inpaint")])
def test_inpainting_unets_take_nine_channels(yaml_name, family):
    configs = configs_for(yaml_name, family)
    assert configs.family == family
    assert (configs.unet["in_channels"], configs.unet["out_channels"]) == (9, 4)


def test_sdxl_base_configs_match_the_public_ones():
    configs = configs_for("sd_xl_base.yaml", "sdxl")
    unet = configs.unet
    assert unet["block_out_channels"] == (320, 640, 1280)
    assert unet["down_block_types"] == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert unet["up_block_types"] == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    assert unet["transformer_layers_per_block"] == (1, 2, 10)
    assert unet["attention_head_dim"] == (5, 10, 20)
    assert (unet["cross_attention_dim"], unet["use_linear_projection"]) == (2048, True)
    assert (unet["addition_embed_type"], unet["addition_time_embed_dim"]) == ("text_time", 256)
    assert unet["projection_class_embeddings_input_dim"] == 2816 and unet["class_embed_type"] is None
    assert unet["sample_size"] == 128
    assert (configs.image_size, configs.scale_factor, configs.vae["scaling_factor"]) == (1024, 0.13025, 0.13025)
    assert configs.scheduler == {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                 "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
    clip_l, open_clip = configs.text_encoders
    assert (clip_l.kind, clip_l.model_class, clip_l.key_prefix) == (
        "clip_l", "CLIPTextModel", "conditioner.embedders.0.transformer.text_model.")
    assert (open_clip.kind, open_clip.model_class, open_clip.key_prefix) == (
        "open_clip", "CLIPTextModelWithProjection", "conditioner.embedders.1.model.")
    assert {k: open_clip.config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "projection_dim", "hidden_act")} == {
        "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
        "projection_dim": 1280, "hidden_act": "gelu"}
    for encoder in configs.text_encoders:
        assert (encoder.output_layer, encoder.final_layer_norm) == ("penultimate", False)
    with torch.device("meta"):
        assert parameter_count(UNet2DConditionModel.from_config(unet)) == 2_567_463_684
    assert parameter_count(meta_text_encoder(clip_l)) == 123_060_480
    assert parameter_count(meta_text_encoder(open_clip)) == 694_659_840


def test_sdxl_refiner_configs_match_the_public_ones():
    configs = configs_for("sd_xl_refiner.yaml", "sdxl_refiner")
    unet = configs.unet
    assert unet["block_out_channels"] == (384, 768, 1536, 1536)
    assert unet["down_block_types"] == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert unet["attention_head_dim"] == (6, 12, 24, 24)
    assert (unet["transformer_layers_per_block"], unet["cross_attention_dim"]) == (4, 1280)
    assert (unet["projection_class_embeddings_input_dim"], unet["addition_embed_type"]) == (2560, "text_time")
    (open_clip,) = configs.text_encoders
    assert (open_clip.model_class, open_clip.key_prefix) == ("CLIPTextModelWithProjection",
                                                             "conditioner.embedders.0.model.")
    assert (open_clip.config["hidden_size"], open_clip.config["num_hidden_layers"]) == (1280, 32)


# --- yaml checked against the weights ---------------------------------------------------------------------

def test_yaml_that_contradicts_the_unet_weights_is_refused():
    with pytest.raises(ValueError, match="4 input channels .* shape \\(320, 9, 3, 3\\)"):
        configs_for("v1-inference.yaml", "sd1_inpaint")
    shapes = {**checkpoint_shapes("sd1"), "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k"
                                          ".weight": (640, 1024)}
    with pytest.raises(ValueError, match="context_dim 768"):
        build_component_configs(load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml"), shapes)


def test_yaml_text_sizes_that_contradict_the_weights_are_refused():
    cfg = load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml")
    cfg["model"]["params"]["cond_stage_config"]["params"] = {"width": 1024}
    with pytest.raises(ValueError, match="width=1024.*has 768"):
        build_component_configs(cfg, checkpoint_shapes("sd1"))


def test_missing_text_encoder_weights_and_sizes_are_reported():
    shapes = {k: v for k, v in checkpoint_shapes("sd1").items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(ValueError, match="no text encoder weights under 'cond_stage_model.transformer.text_model.'"):
        build_component_configs(load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml"), shapes)


def test_old_transformers_layout_without_text_model_level():
    shapes = {k.replace("transformer.text_model.", "transformer."): v for k, v in checkpoint_shapes("sd1").items()}
    configs = build_component_configs(load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml"), shapes)
    (clip_l,) = configs.text_encoders
    assert clip_l.key_prefix == "cond_stage_model.transformer."
    assert clip_l.config["num_hidden_layers"] == 12


# --- small custom models: sizes from real tensors and from the yaml ----------------------------------------

def tiny_sd1_yaml(text_params=None):
    cfg = load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml")
    params = cfg["model"]["params"]
    params["image_size"] = 8
    params["unet_config"]["params"].update(model_channels=32, channel_mult=[1, 2], attention_resolutions=[1],
                                           num_heads=4, context_dim=48)
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 1, 2, 2])
    params["cond_stage_config"]["params"] = dict(text_params or {})
    return cfg


def test_text_sizes_come_from_real_tensors_and_heads_from_the_yaml():
    original = CLIPTextConfig(vocab_size=49408, hidden_size=48, intermediate_size=72, num_hidden_layers=3,
                              num_attention_heads=6, max_position_embeddings=77, hidden_act="gelu")
    encoder = CLIPTextModel(original)
    prefix = "cond_stage_model.transformer.text_model."
    # transformers >= 5.6 has no "text_model." level; original files always do.
    weights = {prefix + k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    configs = build_component_configs(tiny_sd1_yaml({"heads": 6, "act": "gelu"}), shapes)
    (clip_l,) = configs.text_encoders
    assert {k: clip_l.config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "hidden_act", "vocab_size")} == {
        "hidden_size": 48, "intermediate_size": 72, "num_hidden_layers": 3, "num_attention_heads": 6,
        "hidden_act": "gelu", "vocab_size": 49408}
    rebuilt = CLIPTextModel(CLIPTextConfig(**clip_l.config))
    rebuilt.load_state_dict({k[len(prefix):]: v for k, v in weights.items()}, strict=True)
    ids = torch.tensor([[49406, 320, 2368, 49407]])
    torch.testing.assert_close(rebuilt(ids).last_hidden_state, encoder(ids).last_hidden_state)


def test_tiny_yaml_alone_gives_a_working_set_of_modules():
    cfg = tiny_sd1_yaml({"width": 48, "layers": 2, "heads": 4, "vocab_size": 49408, "max_length": 77,
                         "act": "quick_gelu"})
    configs = build_component_configs(cfg, {})
    assert configs.image_size == 64  # the yaml's own latent size 8, times the VAE's factor 8
    assert configs.unet["sample_size"] == 8 and configs.unet["attention_head_dim"] == 4
    (clip_l,) = configs.text_encoders
    assert (clip_l.config["hidden_size"], clip_l.config["num_hidden_layers"], clip_l.config["intermediate_size"]) == (
        48, 2, 192)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(configs.unet).eval()
    vae = AutoencoderKL.from_config(configs.vae).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**clip_l.config)).eval()
    with torch.no_grad():
        context = text_encoder(torch.tensor([[49406, 320, 2368, 49407]])).last_hidden_state
        latent = torch.randn(1, 4, 8, 8)
        noise = unet(latent, torch.tensor([999]), encoder_hidden_states=context).sample
        image = vae.decode(latent / configs.scale_factor).sample
    assert noise.shape == (1, 4, 8, 8) and image.shape == (1, 3, 64, 64)


def test_head_count_rule_follows_openaimodel():
    cfg = load_ldm_yaml(CONFIGS_DIR / "sd_xl_base.yaml")
    # Spelled-out num_heads -1 beside num_head_channels: diffusers' own converter would give -1 heads.
    cfg["model"]["params"]["network_config"]["params"]["num_heads"] = -1
    assert build_component_configs(cfg, checkpoint_shapes("sdxl")).unet["attention_head_dim"] == (5, 10, 20)
    sd1 = load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml")
    sd1["model"]["params"]["unet_config"]["params"]["num_head_channels"] = 40  # wins over num_heads, as in ldm
    assert build_component_configs(sd1, checkpoint_shapes("sd1")).unet["attention_head_dim"] == (8, 16, 32, 32)


def test_sdxl_size_embedding_width_comes_from_the_conditioner():
    cfg = load_ldm_yaml(CONFIGS_DIR / "sd_xl_refiner.yaml")
    for model in cfg["model"]["params"]["conditioner_config"]["params"]["emb_models"][1:]:
        model["params"]["outdim"] = 8
    assert build_component_configs(cfg, checkpoint_shapes("sdxl_refiner")).unet["addition_time_embed_dim"] == 8


def test_standard_heads():
    assert [standard_heads(w) for w in (768, 1024, 1280, 640, 32)] == [12, 16, 20, 10, 1]


def test_unsupported_encoder_output_and_schedule_are_refused():
    cfg = load_ldm_yaml(CONFIGS_DIR / "sd_xl_base.yaml")
    bad = copy.deepcopy(cfg)
    bad["model"]["params"]["conditioner_config"]["params"]["emb_models"][0]["params"]["layer_idx"] = 5
    with pytest.raises(ValueError, match="unsupported text encoder output 'hidden'"):
        build_component_configs(bad, checkpoint_shapes("sdxl"))
    sd1 = load_ldm_yaml(CONFIGS_DIR / "v1-inference.yaml")
    sd1["model"]["params"]["beta_schedule"] = "cosine"
    with pytest.raises(ValueError, match="beta_schedule 'cosine'"):
        build_component_configs(sd1, checkpoint_shapes("sd1"))


def test_load_ldm_yaml_names_a_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="broken.yaml: expected a YAML mapping"):
        load_ldm_yaml(path)


# --- tokenizer files --------------------------------------------------------------------------------------

def test_clip_tokenizer_from_the_repository_files():
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZERS_DIR / "clip"), local_files_only=True)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {49407} and len(padded) == 77


def test_open_clip_tokenizer_pads_with_exclamation_mark():
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZERS_DIR / "open_clip"), local_files_only=True)
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.model_max_length) == ("!", 0, 77)
    padded = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert padded[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and set(padded[7:]) == {0}


def test_tokenizer_files_are_what_the_tool_regenerates():
    spec = importlib.util.spec_from_file_location("build_clip_tokenizer", INSTALL_DIR / "tools" /
                                                  "build_clip_tokenizer.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    lines = (TOKENIZERS_DIR / "clip" / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines]
    vocab = tool.build_vocab(merges)
    assert json.loads((TOKENIZERS_DIR / "clip" / "vocab.json").read_bytes())["<|endoftext|>"] == 49407
    for folder, pad in (("clip", "<|endoftext|>"), ("open_clip", "!")):
        for name, text in tool.tokenizer_files(vocab, merges, pad).items():
            assert (TOKENIZERS_DIR / folder / name).read_bytes() == text.encode("utf-8"), f"{folder}/{name}"
