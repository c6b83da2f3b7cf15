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
