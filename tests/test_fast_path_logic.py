"""The parts of the GPU fast path that are plain logic: who may capture a graph while a compilation
runs, and how running compilations are reported. (The GPU paths themselves are measured by
bench/gpu_speed.py, which also checks that their images equal the plain path's.)"""

import threading
import time

from modules.cuda_graphs import WarmUp, _CaptureGate, warmup_note


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

    from modules.acceleration import COMPILED_BLOCKS, compiled_blocks
    from modules.sd_model import call_unet
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
    and leaves the model as it found it."""
    import pytest
    import torch

    from modules.acceleration import Acceleration, applied
    from modules.sd_model import call_unet
    from tiny_models import load_tiny_model

    assert Acceleration.parse("cl+fused_qkv+sdpa=MATH") == Acceleration(True, True, "MATH")
    assert Acceleration.parse("nchw") == Acceleration()
    assert Acceleration.parse("compile=blocks+quick+tuned") == Acceleration(compile="blocks", quick=True, tuned=True)
    with pytest.raises(ValueError, match="unknown acceleration part 'fast'"):
        Acceleration.parse("cl+fast")

    unet = load_tiny_model(tmp_path, "sd1").unet
    g = torch.Generator().manual_seed(1)
    tensors = {"x": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor([10.0, 10.0]),
               "context": torch.randn(2, 77, 32, generator=g)}
    with torch.no_grad():
        plain = call_unet(unet, *tensors.values(), None, None)
        keys = set(unet.state_dict())
        with applied(unet, Acceleration.parse("cl+fused_qkv+sdpa=MATH")) as call:
            assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(call(**tensors).float(), plain, atol=1e-4)
        assert set(unet.state_dict()) == keys and unet.conv_in.weight.is_contiguous()


def test_compile_helpers_fill_the_cache_the_serving_process_then_reads(tmp_path, monkeypatch):
    """Two helper processes compile halves of a UNet's blocks (random weights of the same architecture);
    the loaded model's own compilation afterwards builds no graph itself: every one comes from their
    cache. A second prebuild for the same shapes starts no helper."""
    import torch

    from modules import compile_helpers
    from modules.sd_model import COMPILE_SETTINGS
    from tiny_models import load_tiny_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    model = load_tiny_model(tmp_path, "sd1")
    g = torch.Generator().manual_seed(0)
    tensors = {"x": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor([500.0, 500.0]),
               "context": torch.randn(2, 77, 32, generator=g), "pooled": None, "time_ids": None}
    job = compile_helpers.job_for("unet", model.unet, COMPILE_SETTINGS, tensors, (0, 2))
    assert compile_helpers.Job.from_json(job.to_json()) == job
    compile_helpers.prebuild("unet", model.unet, COMPILE_SETTINGS, tensors, helpers=2)
    assert len(list((tmp_path / "inductor" / "compile-helpers").glob("*.done"))) == 1  # no helper failed

    counters = torch._dynamo.utils.counters["inductor"]
    counters.clear()
    with torch.no_grad():  # what the UNet's runner does with --compile: the compiled copy, then a call
        compiled = model._compiled_unet()
        model._projections.update(tensors["context"], tensors["context"], keep=True)
        out = compiled(**tensors)
        plain = model._unet_forward(**tensors)
    assert counters["fxgraph_cache_hit"] > 0 and counters["fxgraph_cache_miss"] == 0
    assert torch.allclose(out, plain, atol=1e-4)
    torch._dynamo.reset()

    started = time.perf_counter()
    compile_helpers.prebuild("unet", model.unet, COMPILE_SETTINGS, tensors, helpers=2)
    assert time.perf_counter() - started < 1.0


def test_a_failing_compile_helper_reports_why(tmp_path):
    from modules import compile_helpers

    job = compile_helpers.Job(part="vae", config={"no_such_field": 1, "block_out_channels": "bad"}, dtype="float32",
                              channels_last=False, requires_grad=False, acceleration={}, inputs={}, device="cpu")
    [error] = compile_helpers.run_helpers([job])
    assert error.startswith("vae None: exit 1") and "Error" in error
