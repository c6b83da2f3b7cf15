"""The parts of the GPU fast path that are plain logic: who may capture a graph while a compilation
runs, and how running compilations are reported. (The GPU paths themselves are measured by
bench/gpu_speed.py, which also checks that their images equal the plain path's.)"""

import logging
import threading
import time

from modules.accel.cuda_graphs import WarmUp, _CaptureGate, warmup_note


def test_no_capture_starts_while_a_compilation_runs():
    gate = _CaptureGate()
    assert gate.try_capture()
    gate.end_capture()
    gate.begin_compile()
    assert not gate.try_capture()  # the caller runs without a graph instead
    gate.end_compile()
    assert gate.try_capture()
    gate.end_capture()


def test_a_compilation_waits_for_a_capture_in_progress():
    gate = _CaptureGate()
    assert gate.try_capture()
    started = threading.Event()

    def compile_():
        gate.begin_compile()
        started.set()
        gate.end_compile()

    thread = threading.Thread(target=compile_)
    thread.start()
    assert not started.wait(0.2)  # blocked behind the capture
    gate.end_capture()
    assert started.wait(2)
    thread.join()


def test_warmup_note_names_what_is_still_compiling():
    done = WarmUp("VAE decoder 1x4x64x64")
    done.finished = time.perf_counter()
    running = WarmUp("UNet 2x4x64x64", started=time.perf_counter() - 12.4)
    assert warmup_note([done]) is None
    note = warmup_note([done, running])
    assert note.startswith("compiling UNet 2x4x64x64 (12 s)") and "VAE" not in note


def test_compiled_blocks_share_the_weights_and_leave_the_model_plain(tmp_path):
    """--compile's UNet: a copy whose repeated blocks Inductor compiles (here for the CPU), sharing
    every weight with the model, whose own forward stays uncompiled for the plain path."""
    import torch

    from modules.accel.compilation import COMPILED_BLOCKS, compiled_blocks
    from modules.models.sd_model import call_unet
    from tiny_models import load_tiny_model

    model = load_tiny_model(tmp_path, "sd1")
    twin = compiled_blocks(model.unet)
    assert twin is not model.unet
    assert all(a is b for a, b in zip(twin.parameters(), model.unet.parameters()))
    blocks = [m for m in model.unet.modules() if type(m).__name__ in COMPILED_BLOCKS]
    assert blocks and all(getattr(m, "_compiled_call_impl", None) is None for m in blocks)
    assert any(getattr(m, "_compiled_call_impl", None) is not None for m in twin.modules())

    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        plain = call_unet(model.unet, x, t, context, None, None)
        compiled = call_unet(twin, x, t, context, None, None)
        model.unet.conv_out.bias.add_(1.0)  # an in-place weight change (a LoRA patch) reaches the copy too
        patched = call_unet(twin, x, t, context, None, None)
    assert torch.allclose(plain, compiled, atol=1e-4)
    assert torch.allclose(patched, compiled + 1.0, atol=1e-4)


def test_acceleration_variants_parse_and_undo_themselves(tmp_path):
    """The benchmark's one-optimisation-at-a-time switch: each variant computes the same UNet output
    and leaves the model as it found it; its compile parts are the settings a runner compiles with."""
    import pytest
    import torch

    from bench.acceleration_variants import Variant, applied, runner_compile_settings
    from modules.accel.compilation import COMPILE_SETTINGS, CompileSettings
    from modules.models.sd_model import call_unet
    from tiny_models import load_tiny_model

    assert Variant.parse("cl+fused_qkv+sdpa=MATH") == Variant(True, True, "MATH")
    assert Variant.parse("nchw") == Variant()
    assert Variant.parse("compile=blocks+quick+tuned") == Variant(compile="blocks", quick=True, tuned=True)
    assert runner_compile_settings("compile=layers+quick") == COMPILE_SETTINGS
    assert runner_compile_settings("compile=blocks+mm1x1") == CompileSettings(regions="blocks", mm1x1=True)
    with pytest.raises(ValueError, match="unknown acceleration part 'fast'"):
        Variant.parse("cl+fast")
    with pytest.raises(ValueError, match="compile=blocks or compile=layers"):
        runner_compile_settings("cl+compile=full")

    unet = load_tiny_model(tmp_path, "sd1").unet
    g = torch.Generator().manual_seed(1)
    tensors = {"x": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor([10.0, 10.0]),
               "context": torch.randn(2, 77, 32, generator=g)}
    with torch.no_grad():
        plain = call_unet(unet, *tensors.values(), None, None)
        keys = set(unet.state_dict())
        with applied(unet, Variant.parse("cl+fused_qkv+sdpa=MATH")) as call:
            assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(call(**tensors).float(), plain, atol=1e-4)
        assert set(unet.state_dict()) == keys and unet.conv_in.weight.is_contiguous()


def test_compile_helpers_fill_the_cache_the_serving_process_then_reads(tmp_path, monkeypatch, caplog):
    """Two helper processes compile halves of a UNet's blocks (random weights of the same architecture),
    one of them started ahead of its job (a HelperPool's, as a load starts them); the loaded model's own
    compilation afterwards builds no graph itself: every one comes from their cache. A second prebuild
    for the same shapes starts no helper."""
    import torch

    from modules.accel import compile_helpers
    from modules.accel.compilation import COMPILE_SETTINGS
    from modules.accel.runner import ModelRunner, RunnerSettings
    from tiny_models import load_tiny_model, unet_inputs

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    model = load_tiny_model(tmp_path, "sd1")
    tensors = unet_inputs(model.unet)
    job = compile_helpers.job_for("unet", model.unet, COMPILE_SETTINGS, tensors, (0, 2))
    assert compile_helpers.Job.from_json(job.to_json()) == job
    pool = compile_helpers.HelperPool(1, "cpu")
    with caplog.at_level(logging.INFO, logger="modules.accel.compile_helpers"):
        compile_helpers.prebuild("unet", model.unet, COMPILE_SETTINGS, tensors, helpers=2, pool=pool)
    assert len(list((tmp_path / "inductor" / "compile-helpers").glob("*.done"))) == 1  # no helper failed
    # each helper reports its phases; only the pooled one was ready before its job came
    finished = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compile helper unet")]
    assert len(finished) == 2 and sum("ready after" in message for message in finished) == 1
    assert pool.take(1) == []

    counters = torch._dynamo.utils.counters["inductor"]
    counters.clear()
    runner = ModelRunner(model, RunnerSettings(compile=True))
    with torch.no_grad():  # what the UNet's runner does with --compile: the compiled copy, then a call
        compiled = runner._compiled_unet()
        runner._context_projections().update(tensors["context"], tensors["context"], keep=True)
        out = compiled(**tensors)
        plain = runner._unet_forward(**tensors)
    assert counters["fxgraph_cache_hit"] > 0 and counters["fxgraph_cache_miss"] == 0
    assert torch.allclose(out, plain, atol=1e-4)
    torch._dynamo.reset()

    started = time.perf_counter()
    compile_helpers.prebuild("unet", model.unet, COMPILE_SETTINGS, tensors, helpers=2)
    assert time.perf_counter() - started < 1.0


def test_a_pooled_helper_without_a_job_leaves_when_the_serving_process_does():
    from modules.accel import compile_helpers

    pool = compile_helpers.HelperPool(1, "cpu")
    [helper] = pool.take(1)
    helper.process.stdin.close()  # what the serving process's exit does to its pipe
    assert helper.process.wait(timeout=120) == 0
    helper.log.seek(0)
    assert "Traceback" not in helper.log.read()


def test_a_failing_compile_helper_reports_why(tmp_path):
    from modules.accel import compile_helpers

    job = compile_helpers.Job(part="vae", config={"no_such_field": 1, "block_out_channels": "bad"}, dtype="float32",
                              channels_last=False, requires_grad=False, compile_settings={}, inputs={}, device="cpu")
    [error] = compile_helpers.run_helpers([job])
    assert error.startswith("vae None: exit 1") and "Error" in error


def _sdxl_like_unet(layers: tuple[int, int]):
    """A tiny UNet with SDXL's structure: cross-attention at both levels, `layers` transformer layers each."""
    import torch
    from diffusers import UNet2DConditionModel

    from tiny_models import tiny_unet_config

    config = {**tiny_unet_config("sdxl"), "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), "transformer_layers_per_block": layers}
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(config).eval()


def test_compiled_layers_split_deep_transformers_and_compute_the_same():
    """compile="layers" (what --compile uses): a transformer deeper than WHOLE_TRANSFORMER_LAYERS is
    compiled layer by layer with its two ends as regions of their own, shallower ones whole; the
    output is the plain UNet's."""
    import torch

    from modules.accel.compilation import WHOLE_TRANSFORMER_LAYERS, CompileSettings, compiled_blocks
    from modules.models.sd_model import call_unet
    from tiny_models import unet_inputs

    unet = _sdxl_like_unet((1, WHOLE_TRANSFORMER_LAYERS + 1))
    twin = compiled_blocks(unet, CompileSettings(regions="layers", quick=True))

    def compiled(module):
        return getattr(module, "_compiled_call_impl", None) is not None

    transformers = [m for m in twin.modules() if type(m).__name__ == "Transformer2DModel"]
    deep = [t for t in transformers if len(t.transformer_blocks) > WHOLE_TRANSFORMER_LAYERS]
    shallow = [t for t in transformers if t not in deep]
    assert deep and shallow
    assert all(compiled(t) for t in shallow)
    for transformer in deep:
        assert not compiled(transformer) and all(compiled(layer) for layer in transformer.transformer_blocks)
        assert {"_operate_on_continuous_inputs", "_get_output_for_continuous_inputs"} <= set(vars(transformer))
    assert not any(compiled(m) or "_operate_on_continuous_inputs" in vars(m) for m in unet.modules())

    tensors = unet_inputs(unet)
    with torch.no_grad():
        plain = call_unet(unet, **tensors)
        fast = call_unet(twin, **tensors)
    assert torch.allclose(plain, fast, atol=1e-4)


def test_compile_shares_cover_every_block_once_and_keep_equal_blocks_together():
    """The compile helpers' shares of SDXL's UNet: each block in exactly one share, none empty, and the
    blocks that compile to one graph in the same share (split, that graph would be compiled twice)."""
    import torch
    import yaml
    from diffusers import UNet2DConditionModel

    from modules.models import ldm_config
    from modules.accel.compilation import _regions, _share_of, _signature
    from modules.accel.compile_helpers import ROOT
    from modules.models.model_families import Family

    config = ldm_config._unet_config(yaml.safe_load((ROOT / "configs" / "sd_xl_base.yaml").read_text()),
                                     Family.SDXL, 1024)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    for granularity in ("blocks", "layers"):
        regions = _regions(unet, granularity)
        for count in (2, 4, 7):
            shares = [_share_of(regions, index, count) for index in range(count)]
            assert all(shares)
            assert sorted(id(r) for share in shares for r in share) == sorted(id(r) for r in regions)
            owner = {id(r): index for index, share in enumerate(shares) for r in share}
            by_signature: dict = {}
            for region in regions:
                by_signature.setdefault(_signature(region), set()).add(owner[id(region)])
            assert all(len(owners) == 1 for owners in by_signature.values())
