"""Saving follows AUTOMATIC1111's folders, counters and default names, and never leaves partial files."""

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from conftest import ROOT
from modules.io.image_saving import (ImageFacts, SaveOptions, image_grid, read_parameters, save_grid, save_image,
                                     temp_dir_for)

NOW = dt.datetime(2026, 11, 29, 13, 45, 7)
FACTS = ImageFacts(seed=1234, prompt="a (red) circle, on: blue?", now=NOW)  # the prompt never reaches a file name


def _image(colour="red", size=(8, 8)):
    return Image.new("RGB", size, colour)


def test_counter_and_dated_folders(tmp_path):
    options = SaveOptions(outputs_dir=tmp_path, temp_dir=tmp_path.parent / "tmp-saving")
    first = save_image(_image(), options, "txt2img", FACTS, "p\nSteps: 1, Seed: 1234, Size: 8x8")
    folder = tmp_path / "txt2img-images" / "2026-11-29"
    assert first == folder / "00000-1234.png"
    (folder / "00041-999.png").write_bytes(b"")  # the counter continues from the largest number
    second = save_image(_image(), options, "txt2img", FACTS, None)
    assert second.name == "00042-1234.png"
    assert read_parameters(first) == "p\nSteps: 1, Seed: 1234, Size: 8x8"


def test_the_counter_scans_a_folder_only_when_something_else_changed_it(tmp_path, monkeypatch):
    """A folder of thousands of images takes milliseconds to scan: consecutive saves continue from the
    number they know, and a file added or removed by another program makes the next save look again."""
    options = SaveOptions(outputs_dir=tmp_path)
    scans = []
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: scans.append(self) or real_iterdir(self))
    names = [save_image(_image(), options, "txt2img", FACTS, None).name for _ in range(3)]
    assert names == ["00000-1234.png", "00001-1234.png", "00002-1234.png"] and len(scans) == 1
    folder = tmp_path / "txt2img-images" / "2026-11-29"
    time.sleep(0.01)
    (folder / "00002-1234.png").unlink()  # removed elsewhere: the number is free again
    assert save_image(_image(), options, "txt2img", FACTS, None).name == "00002-1234.png" and len(scans) == 2
    time.sleep(0.01)
    (folder / "00100-7.png").write_bytes(b"")
    assert save_image(_image(), options, "txt2img", FACTS, None).name == "00101-1234.png" and len(scans) == 3


def test_the_infotext_is_carried_in_the_png(tmp_path):
    text = "ünïcödé prompt\nSteps: 20, Sampler: Euler, Seed: 1"
    path = save_image(_image(), SaveOptions(outputs_dir=tmp_path), "img2img", FACTS, text)
    assert path == tmp_path / "img2img-images" / "2026-11-29" / "00000-1234.png"
    assert read_parameters(path) == text


def test_temporary_files_are_written_beside_outputs_never_in_it(tmp_path):
    outputs = tmp_path / "outputs"
    assert SaveOptions(outputs_dir=outputs).temp_folder == temp_dir_for(outputs) == tmp_path / "tmp"
    path = save_image(_image(), SaveOptions(outputs_dir=outputs), "extras", FACTS, None)
    assert [p for p in outputs.rglob("*") if p.is_file()] == [path]
    assert (tmp_path / "tmp").is_dir() and not any((tmp_path / "tmp").iterdir())  # written there, renamed away


def test_grid_layout_and_name(tmp_path):
    grid = image_grid([_image(c) for c in ("red", "green", "blue", "white")])
    assert grid.size == (16, 16)
    assert grid.getpixel((12, 12)) == (255, 255, 255)
    path = save_grid(grid, SaveOptions(outputs_dir=tmp_path), "txt2img", FACTS, "grid text")
    assert path == tmp_path / "txt2img-grids" / "2026-11-29" / "grid-0000.png"
    assert image_grid([_image()] * 3).size == (16, 16)  # 2 rows x 2 columns, one empty


def test_a_killed_save_leaves_no_partial_file(tmp_path):
    outputs, temp = tmp_path / "outputs", tmp_path / "tmp"
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1])\n"
        "from PIL import Image\n"
        "from modules.io.image_saving import SaveOptions, ImageFacts, save_image\n"
        "big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (6000, 6000, 3), dtype=np.uint8))\n"
        "print('saving', flush=True)\n"
        "save_image(big, SaveOptions(outputs_dir=__import__('pathlib').Path(sys.argv[2]),"
        " temp_dir=__import__('pathlib').Path(sys.argv[3])), 'txt2img', ImageFacts(seed=1), 'x')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(outputs), str(temp)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "saving"
    time.sleep(0.5)  # encoding a 6000x6000 noise PNG takes seconds: kill it mid-write
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    leftovers = [p for p in outputs.rglob("*") if p.is_file()]
    assert leftovers == []
    assert any(temp.iterdir())  # the partial file is in the temporary folder, not in outputs/
