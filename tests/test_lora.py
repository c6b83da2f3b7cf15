"""kohya LoRA files on tiny SD 1.x and SDXL models: exact patching, exact restoring, tags, files and hashes."""

import hashlib
import os

import numpy as np
import pytest
import safetensors.torch
import torch

from modules.models import lora
from modules.models.checkpoints import CheckpointInfo
from modules.models.devices import DevicePolicy
from modules.io.generation_request import Txt2ImgRequest
from modules.models.lora import LoraCall
from modules.pipeline.processing import txt2img
from modules.models.safe_load import UnsafeModelFileError
from modules.models.sd_loader import load_checkpoint
from pickle_payloads import WritesCanary
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict


def _load(tmp_path_factory, family, policy=None):
    folder = tmp_path_factory.mktemp(family)
    path = folder / f"tiny-{family}.safetensors"
    save_checkpoint(tiny_original_state_dict(family), path)
    (folder / f"tiny-{family}.yaml").write_text(tiny_ldm_yaml(family))
    return load_checkpoint(CheckpointInfo(path, path.name, "0" * 64), policy or DevicePolicy.cpu())


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return _load(tmp_path_factory, "sd1")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return _load(tmp_path_factory, "sdxl")


def _text_module(encoder, path):
    # transformers >= 5.6 CLIPTextModel has no `text_model.` level; CLIPTextModelWithProjection keeps it.
    names = dict(encoder.named_modules())
    return names.get(path) or names["text_model." + path]


# kohya layer name -> (where the layer is: "unet" or text encoder index, its diffusers/transformers path)
SD1_LAYERS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v"),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
    "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_v":
        ("unet", "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v"),
    "lora_unet_down_blocks_0_attentions_0_proj_in": ("unet", "down_blocks.0.attentions.0.proj_in"),  # 1x1 conv
    "lora_unet_down_blocks_0_resnets_0_conv1": ("unet", "down_blocks.0.resnets.0.conv1"),  # 3x3 conv
    # The same model named the original (LDM) way: input_blocks.1.1 is down_blocks.0.attentions.0.
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (0, "encoder.layers.0.self_attn.q_proj"),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj": (0, "encoder.layers.0.self_attn.k_proj"),
    "lora_te_text_model_encoder_layers_0_self_attn_v_proj": (0, "encoder.layers.0.self_attn.v_proj"),
    "lora_te_text_model_encoder_layers_0_self_attn_out_proj": (0, "encoder.layers.0.self_attn.out_proj"),
    "lora_te_text_model_encoder_layers_1_mlp_fc1": (0, "encoder.layers.1.mlp.fc1"),
    # Written without the `text_model_` level, as files made from flattened CLIPTextModels are.
    "lora_te_encoder_layers_1_self_attn_q_proj": (0, "encoder.layers.1.self_attn.q_proj"),
}

SDXL_LAYERS = {
    # SDXL files use the original names: input_blocks.4.1 is down_blocks.1.attentions.0 in the tiny SDXL.
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q":
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k":
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0":
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_v":
        ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_v"),
    "lora_unet_output_blocks_0_1_proj_in": ("unet", "up_blocks.0.attentions.0.proj_in"),  # linear in SDXL
    "lora_unet_input_blocks_1_0_in_layers_2": ("unet", "down_blocks.0.resnets.0.conv1"),  # 3x3 conv
    "lora_unet_output_blocks_2_0_skip_connection": ("unet", "up_blocks.0.resnets.2.conv_shortcut"),  # 1x1 conv
    # ... and the diffusers names work as well.
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_k":
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_k"),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (0, "encoder.layers.0.self_attn.q_proj"),
    "lora_te1_text_model_encoder_layers_1_mlp_fc1": (0, "encoder.layers.1.mlp.fc1"),
    "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": (1, "encoder.layers.0.self_attn.k_proj"),
    "lora_te2_text_model_encoder_layers_0_self_attn_v_proj": (1, "encoder.layers.0.self_attn.v_proj"),
    "lora_te2_text_model_encoder_layers_2_self_attn_out_proj": (1, "encoder.layers.2.self_attn.out_proj"),
    "lora_te2_text_model_encoder_layers_1_mlp_fc1": (1, "encoder.layers.1.mlp.fc1"),
}


def _target(model, where):
    part, path = where
    if part == "unet":
        return dict(model.unet.named_modules())[path]
    return _text_module(model.text_encoders[part].model, path)


def _random_layer(weight_shape, rank, seed, strength=0.3):
    generator = torch.Generator().manual_seed(seed)
    out, inp = weight_shape[0], weight_shape[1]
    kernel = tuple(weight_shape[2:])
    down = torch.randn((rank, inp, *kernel), generator=generator) * strength
    up = torch.randn((out, rank, *((1, 1) if kernel else ())), generator=generator) * strength
    return down, up


def _make_lora(model, layers, *, seed=0, alpha=3.0, with_alpha=True):
    """A kohya state dict over the named layers: ranks 2-4, random down/up."""
    state = {}
    for index, (name, where) in enumerate(layers.items()):
        rank = 2 + (seed + index) % 3
        down, up = _random_layer(_target(model, where).weight.shape, rank, seed * 1000 + index)
        state[f"{name}.lora_down.weight"] = down
        state[f"{name}.lora_up.weight"] = up
        if with_alpha:
            state[f"{name}.alpha"] = torch.tensor(alpha)
    return state


def _expected(base, state, name, multiplier):
    """base + multiplier * alpha / rank * up @ down, computed here without the module's code."""
    down, up = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"]
    alpha_key = f"{name}.alpha"
    scale = float(state[alpha_key]) / down.shape[0] if alpha_key in state else 1.0
    if down.ndim == 4 and down.shape[2:] != (1, 1):
        product = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    elif down.ndim == 4:
        product = (up[:, :, 0, 0] @ down[:, :, 0, 0])[:, :, None, None]
    else:
        product = up @ down
    return base + product * (multiplier * scale)


def _save_lora(state, path, metadata=None):
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def _snapshot(model):
    params = {f"unet.{k}": v for k, v in model.unet.named_parameters()}
    for i, encoder in enumerate(model.text_encoders):
        params.update({f"te{i}.{k}": v for k, v in encoder.model.named_parameters()})
    return {k: v.detach().clone() for k, v in params.items()}


def _assert_same_params(model, snapshot):
    now = _snapshot(model)
    assert now.keys() == snapshot.keys()
    changed = [k for k in now if not torch.equal(now[k], snapshot[k])]
    assert changed == []


def _check_patch(model, layers, state, te_weight, unet_weight, tmp_path):
    network = lora.load_lora(_save_lora(state, tmp_path / "style.safetensors"))
    base = {name: _target(model, where).weight.detach().clone() for name, where in layers.items()}
    before = _snapshot(model)
    with lora.apply_loras(model, [(network, te_weight, unet_weight)]) as report:
        for name, where in layers.items():
            multiplier = unet_weight if where[0] == "unet" else te_weight
            weight = _target(model, where).weight.detach()
            expected = _expected(base[name], state, name, multiplier)
            if state[f"{name}.lora_down.weight"].shape[2:] not in ((), (1, 1)):
                # The 3x3 composition is a convolution in the module and an einsum here: equal up to rounding.
                torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-6)
                assert not torch.equal(weight, base[name])
            else:
                assert torch.equal(weight, expected), name
        changed = sum(not torch.equal(v, before[k]) for k, v in _snapshot(model).items())
    _assert_same_params(model, before)
    return report, changed


def test_sd1_layers_patched_exactly_and_restored_bit_for_bit(sd1, tmp_path):
    state = _make_lora(sd1, SD1_LAYERS, seed=1)
    report, changed = _check_patch(sd1, SD1_LAYERS, state, te_weight=0.7, unet_weight=1.3, tmp_path=tmp_path)
    assert report.patched == {"style": len(SD1_LAYERS)}
    assert changed == len(SD1_LAYERS)
    assert report.unknown == {"style": 0} and report.mismatched == {"style": 0}


def test_sdxl_ldm_and_diffusers_unet_names_and_both_text_encoders(sdxl, tmp_path):
    state = _make_lora(sdxl, SDXL_LAYERS, seed=2, alpha=2.0)
    report, changed = _check_patch(sdxl, SDXL_LAYERS, state, te_weight=1.0, unet_weight=0.8, tmp_path=tmp_path)
    assert report.patched == {"style": len(SDXL_LAYERS)}
    assert changed == len(SDXL_LAYERS)


def test_missing_alpha_means_scale_one(sd1, tmp_path):
    layers = dict(list(SD1_LAYERS.items())[:3])
    state = _make_lora(sd1, layers, seed=3, with_alpha=False)
    report, changed = _check_patch(sd1, layers, state, te_weight=1.0, unet_weight=1.0, tmp_path=tmp_path)
    assert changed == 3


def test_te_weight_zero_leaves_text_encoders_untouched(sd1, tmp_path):
    state = _make_lora(sd1, SD1_LAYERS, seed=4)
    network = lora.load_lora(_save_lora(state, tmp_path / "l.safetensors"))
    before = _snapshot(sd1)
    with lora.apply_loras(sd1, [(network, 0.0, 1.0)]) as report:
        now = _snapshot(sd1)
        changed = {k for k in now if not torch.equal(now[k], before[k])}
    unet_layers = sum(1 for where in SD1_LAYERS.values() if where[0] == "unet")
    assert report.patched == {"l": unet_layers}
    assert changed and all(k.startswith("unet.") for k in changed)


def test_two_loras_on_one_layer_add_up(sd1, tmp_path):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    layers = {name: SD1_LAYERS[name]}
    first, second = _make_lora(sd1, layers, seed=5), _make_lora(sd1, layers, seed=6, alpha=1.0)
    a = lora.load_lora(_save_lora(first, tmp_path / "a.safetensors"))
    b = lora.load_lora(_save_lora(second, tmp_path / "b.safetensors"))
    weight = _target(sd1, layers[name]).weight
    base = weight.detach().clone()
    with lora.apply_loras(sd1, [(a, 1.0, 0.5), (b, 1.0, 2.0)]):
        expected = _expected(_expected(base, first, name, 0.5), second, name, 2.0)
        assert torch.equal(weight.detach(), expected)
    assert torch.equal(weight.detach(), base)


def test_unknown_keys_are_counted_not_fatal(sd1, tmp_path):
    layers = dict(list(SD1_LAYERS.items())[:2])
    state = _make_lora(sd1, layers, seed=7)
    state["lora_unet_no_such_block_to_q.lora_down.weight"] = torch.randn(2, 32)
    state["lora_unet_no_such_block_to_q.lora_up.weight"] = torch.randn(32, 2)
    state["lora_unet_no_such_block_to_q.alpha"] = torch.tensor(1.0)
    state["lora_unet_mid_block_attentions_0_proj_in.hada_w1_a"] = torch.randn(2, 2)  # LoHa: not supported
    state["lora_te_text_model_encoder_layers_0_mlp_fc2.lora_up.weight"] = torch.randn(32, 2)  # no down
    # An SDXL name on an SD 1.x model: a text encoder this model does not have.
    state["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(2, 64)
    state["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.randn(64, 2)
    # A real layer name with the wrong shape (a LoRA made for a wider model).
    state["lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_down.weight"] = torch.randn(2, 768)
    state["lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_up.weight"] = torch.randn(768, 2)
    network = lora.load_lora(_save_lora(state, tmp_path / "odd.safetensors"))
    assert len(network.unknown_keys) == 2
    before = _snapshot(sd1)
    with lora.apply_loras(sd1, [(network, 1.0, 1.0)]) as report:
        pass
    assert report.patched == {"odd": 2}
    assert report.unknown == {"odd": 2 + 3 + 2}
    assert report.mismatched == {"odd": 1}
    _assert_same_params(sd1, before)


def test_weights_restored_when_the_block_raises(sd1, tmp_path):
    network = lora.load_lora(_save_lora(_make_lora(sd1, SD1_LAYERS, seed=8), tmp_path / "x.safetensors"))
    before = _snapshot(sd1)
    with pytest.raises(RuntimeError, match="interrupted"):
        with lora.apply_loras(sd1, [(network, 1.0, 1.0)]):
            raise RuntimeError("interrupted")
    _assert_same_params(sd1, before)


def test_half_precision_weights_get_float32_sum_cast_once(tmp_path_factory, tmp_path):
    policy = DevicePolicy(torch.device("cpu"), torch.bfloat16, torch.float32, torch.bfloat16)
    model = _load(tmp_path_factory, "sd1", policy)
    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    layers = {name: SD1_LAYERS[name], "lora_unet_down_blocks_0_resnets_0_conv1": SD1_LAYERS[
        "lora_unet_down_blocks_0_resnets_0_conv1"]}
    state = _make_lora(model, layers, seed=9)
    network = lora.load_lora(_save_lora(state, tmp_path / "h.safetensors"))
    weight = _target(model, layers[name]).weight
    base = weight.detach().clone()
    before = _snapshot(model)
    with lora.apply_loras(model, [(network, 0.9, 1.0)]):
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight.detach(), _expected(base.float(), state, name, 0.9).to(torch.bfloat16))
    _assert_same_params(model, before)


def _image(model, prompt="a red circle"):
    request = Txt2ImgRequest(prompt=prompt, steps=3, width=64, height=64, seed=5, save_images=False)
    return np.asarray(txt2img(model, request, None).images[0])


@pytest.fixture(scope="module", autouse=True)
def base_images(sd1, sdxl):
    """Each model's image before any LoRA touched it (autouse: made before the first test runs)."""
    return {"sd1": _image(sd1), "sdxl": _image(sdxl)}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_image_changes_under_lora_and_returns_exactly_after(family, request, base_images, tmp_path):
    model = request.getfixturevalue(family)
    layers = SD1_LAYERS if family == "sd1" else SDXL_LAYERS
    network = lora.load_lora(_save_lora(_make_lora(model, layers, seed=10), tmp_path / "e.safetensors"))
    base = base_images[family]
    with lora.apply_loras(model, [(network, 1.0, 1.0)]):
        patched = _image(model)
    after = _image(model)
    assert not np.array_equal(base, patched)
    assert np.array_equal(base, after)


def test_text_encoder_only_lora_changes_the_image(sd1, base_images, tmp_path):
    te_layers = {k: v for k, v in SD1_LAYERS.items() if v[0] != "unet"}
    network = lora.load_lora(_save_lora(_make_lora(sd1, te_layers, seed=11), tmp_path / "t.safetensors"))
    base = base_images["sd1"]
    with lora.apply_loras(sd1, [(network, 1.0, 1.0)]):
        patched = _image(sd1)
    with lora.apply_loras(sd1, [(network, 0.0, 1.0)]):
        disabled = _image(sd1)
    assert not np.array_equal(base, patched)
    assert np.array_equal(base, disabled)


# ------------------------------------------------------------------------------------------------ files




def test_pickled_lora_with_code_is_refused_unrun(tmp_path):
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "payload": WritesCanary(canary)}, path)
    with pytest.raises(UnsafeModelFileError):
        lora.load_lora(path)
    files = lora.list_lora_files([tmp_path])
    plan = lora.plan_loras("a cat <lora:evil:1>", files, lora.LoraCache())
    assert plan.loras == [] and "evil" in plan.failed and "refused" in plan.failed["evil"]
    assert not canary.exists()


def test_plain_pickled_lora_loads_with_whole_file_hash(sd1, tmp_path):
    layers = dict(list(SD1_LAYERS.items())[:2])
    state = _make_lora(sd1, layers, seed=12)
    path = tmp_path / "old.pt"
    torch.save(state, path)
    network = lora.load_lora(path)
    assert set(network.layers) == set(layers)
    assert network.shorthash == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_safetensors_hash_is_addnet_hash_and_ignores_metadata(tmp_path):
    state = {"lora_unet_a.lora_down.weight": torch.arange(6.0).reshape(2, 3),
             "lora_unet_a.lora_up.weight": torch.arange(8.0).reshape(4, 2)}
    first = _save_lora(state, tmp_path / "a.safetensors", metadata={"ss_output_name": "a"})
    second = _save_lora(state, tmp_path / "b.safetensors", metadata={"ss_output_name": "a much longer name"})
    data = first.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert lora.lora_short_hash(first) == hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    assert lora.lora_short_hash(first) == lora.lora_short_hash(second)
    assert lora.lora_short_hash(first) != hashlib.sha256(data).hexdigest()[:12]
    assert lora.lora_metadata(second) == {"ss_output_name": "a much longer name"}


def test_discovery_is_recursive_with_stem_and_relative_names(tmp_path):
    root = tmp_path / "Lora"
    (root / "styles" / "ink").mkdir(parents=True)
    state = {"lora_unet_a.lora_down.weight": torch.ones(1, 2), "lora_unet_a.lora_up.weight": torch.ones(2, 1)}
    _save_lora(state, root / "top.safetensors")
    _save_lora(state, root / "styles" / "ink" / "Sumi.SAFETENSORS")
    torch.save(state, root / "styles" / "old.pt")
    torch.save(state, root / "styles" / "older.ckpt")
    (root / "styles" / "readme.txt").write_text("not a LoRA")
    (root / "styles" / "top.png").write_bytes(b"")
    files = lora.list_lora_files([root, tmp_path / "missing"])
    assert [(f.name, f.alias) for f in files] == [
        ("Sumi", "styles/ink/Sumi"), ("old", "styles/old"), ("older", "styles/older"), ("top", "top")]
    assert lora.find_lora(files, "Sumi").alias == "styles/ink/Sumi"
    assert lora.find_lora(files, "styles/ink/Sumi").name == "Sumi"
    assert lora.find_lora(files, "sumi").name == "Sumi"
    assert lora.find_lora(files, "nothing") is None


def test_cache_keeps_parsed_files_by_path_and_mtime(tmp_path):
    state = {"lora_unet_a.lora_down.weight": torch.ones(1, 2), "lora_unet_a.lora_up.weight": torch.ones(2, 1)}
    paths = [_save_lora(state, tmp_path / f"{i}.safetensors") for i in range(3)]
    cache = lora.LoraCache(capacity=2)
    first = cache.load(paths[0])
    assert cache.load(paths[0]) is first
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.load(paths[0]) is not first
    cache.load(paths[1])
    cache.load(paths[2])
    assert len(cache) == 2


# ------------------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize("tag, call", [
    ("<lora:ink:0.8>", LoraCall("ink", 0.8, 0.8)),
    ("<lora:ink>", LoraCall("ink", 1.0, 1.0)),
    ("<lora:ink:0.5:1.5>", LoraCall("ink", 0.5, 1.5)),
    ("<lora:ink:0.5:1.5:8>", LoraCall("ink", 0.5, 1.5)),
    ("<lora:ink:unet=0.3>", LoraCall("ink", 1.0, 0.3)),
    ("<lora:ink:te=0:unet=0.6>", LoraCall("ink", 0.0, 0.6)),
    ("<lora:ink:0.7:dyn=4>", LoraCall("ink", 0.7, 0.7)),
    ("<lyco:ink:-0.4>", LoraCall("ink", -0.4, -0.4)),
    ("<lora:styles/ink/Sumi:1>", LoraCall("styles/ink/Sumi", 1.0, 1.0)),
])
def test_lora_tag_forms(tag, call):
    prompt, calls = lora.parse_lora_tags(f"a cat {tag}, sitting")
    assert prompt == "a cat , sitting"
    assert calls == [call]


def test_other_extra_networks_stay_and_several_loras_keep_order():
    prompt, calls = lora.parse_lora_tags("<lora:a:1>x <hypernet:h:0.5> y<LORA:b:0.2>")
    assert prompt == "x <hypernet:h:0.5> y"
    assert [c.name for c in calls] == ["a", "b"]


def test_tag_with_a_non_number_weight_is_refused_by_name():
    with pytest.raises(lora.LoraTagError, match="'strong' is not a number"):
        lora.parse_lora_tags("<lora:ink:strong>")


def test_plan_reports_unknown_names_and_hashes(sd1, tmp_path):
    root = tmp_path / "Lora"
    root.mkdir()
    layers = dict(list(SD1_LAYERS.items())[:2])
    path = _save_lora(_make_lora(sd1, layers, seed=13), root / "ink.safetensors")
    cache = lora.LoraCache()
    plan = lora.plan_loras("a cat <lora:ink:0.5:0.25> <lora:missing:1>", lora.list_lora_files([root]), cache)
    assert plan.prompt == "a cat  "
    assert plan.not_found == ["missing"]
    (network, te, unet), = plan.loras
    assert (network.name, te, unet, network.path) == ("ink", 0.5, 0.25, path.resolve())
    assert plan.infotext == {"Lora hashes": f"ink: {lora.lora_short_hash(path)}"}
    # The image goes on without the missing one.
    with lora.apply_loras(sd1, plan.loras) as report:
        assert report.patched == {"ink": 2}


def test_lora_tag_in_the_prompt_through_txt2img(sd1, tmp_path):
    from modules.models import lora as lora_module
    from modules.pipeline.processing import Resources

    layers = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
              ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
              "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (0, "encoder.layers.0.self_attn.q_proj")}
    folder = tmp_path / "Lora"
    folder.mkdir()
    path = _save_lora(_make_lora(sd1, layers, seed=4), folder / "style.safetensors")
    resources = Resources(lora_files=lora_module.list_lora_files([folder]))

    def run(prompt):
        request = Txt2ImgRequest(prompt=prompt, steps=3, width=64, height=64, seed=2, save_images=False)
        return txt2img(sd1, request, None, resources=resources)

    base = run("a red circle")
    tagged = run("a red circle <lora:style:0.8>")
    after = run("a red circle")
    missing = run("a red circle <lora:nowhere:1>")

    assert not np.array_equal(np.asarray(base.images[0]), np.asarray(tagged.images[0]))
    assert np.array_equal(np.asarray(base.images[0]), np.asarray(after.images[0]))
    assert tagged.infotexts[0].startswith("a red circle <lora:style:0.8>\n")
    assert f'Lora hashes: "style: {lora_module.lora_short_hash(path)}"' in tagged.infotexts[0]
    assert missing.warnings == ["Networks not found: nowhere"]
    assert np.array_equal(np.asarray(base.images[0]), np.asarray(missing.images[0]))
