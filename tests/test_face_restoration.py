"""Face restoration: GFPGAN and CodeFormer files are told apart by their weights, faces are found
with OpenCV's bundled cascades, and only the face region of the image changes.

The models are full-size networks with random weights, built here: their output is noise, but
detection, alignment, pasting and blending are the same as with trained weights.
"""

import numpy as np
import pytest
import safetensors.torch
import skimage.data
import torch
from PIL import Image
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.GFPGAN import GFPGAN
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

from modules.app import cmd_args
from modules.postprocess.face_restoration import (FFHQ_TEMPLATE_512, FaceRestorers, HaarFaceDetector, alignment_matrix, blend,
                                      landmarks_from_eyes)
from modules.io.extras_request import ExtrasRequest
from modules.postprocess.extras import run_extras
from modules.io.generation_request import Txt2ImgRequest
from modules.io.paths import Paths
from modules.pipeline.processing import Resources, txt2img
from modules.postprocess.spandrel_models import inspect
from tiny_models import load_tiny_model

# The astronaut's face in scikit-image's 512x512 photo (x, y, width, height), read off the
# image: cheek to cheek and hairline to chin.
TRUE_FACE = (170, 65, 105, 100)


def overlap(a, b):
    width = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def contiguous(state_dict):
    return {k: v.contiguous() for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """GFPGAN and CodeFormer files, some under misleading names, plus files that are not face
    restorers (one of them named like a CodeFormer)."""
    root = tmp_path_factory.mktemp("face_models")
    gfpgan_dir, codeformer_dir, extra_dir = root / "GFPGAN", root / "Codeformer", root / "extra"
    for folder in (gfpgan_dir, codeformer_dir, extra_dir):
        folder.mkdir()
    torch.manual_seed(0)
    gfpgan = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                    fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
                    sft_half=True).state_dict()
    torch.save({"params_ema": gfpgan}, gfpgan_dir / "restorer.pth")
    safetensors.torch.save_file(contiguous(gfpgan), str(gfpgan_dir / "GFPGANv1.4.safetensors"))
    del gfpgan
    # CodeFormer weights under a GFPGAN name, in the flag folder: the weights decide.
    codeformer = CodeFormer().state_dict()
    torch.save({"params_ema": codeformer}, extra_dir / "GFPGANv1.3.pth")
    del codeformer
    torch.save({"params_ema": ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).state_dict()},
               codeformer_dir / "codeformer.pth")
    safetensors.torch.save_file({"some.weight": torch.zeros(2, 2)}, str(codeformer_dir / "unknown.safetensors"))
    (codeformer_dir / "broken.pth").write_bytes(b"not a model")
    return {"GFPGAN": (gfpgan_dir,), "CodeFormer": (codeformer_dir, extra_dir)}


@pytest.fixture(scope="module")
def restorers(model_dirs):
    return FaceRestorers(model_dirs, torch.device("cpu"))


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def restored(restorers, astronaut):
    """One restore per model: each takes seconds on a CPU."""
    return {"GFPGAN": restorers.restore(astronaut, "GFPGAN"),
            "CodeFormer": restorers.restore(astronaut, "CodeFormer", codeformer_weight=0.7)}


def test_paths_carry_face_restorer_folders(tmp_path):
    args = cmd_args.parse_args(["--data-dir", str(tmp_path), "--gfpgan-models-path", str(tmp_path / "g"),
                                "--codeformer-models-path", str(tmp_path / "c")], {})
    paths = Paths.from_args(args)
    assert paths.face_restorer_dirs == {
        "GFPGAN": (tmp_path.resolve() / "models" / "GFPGAN", (tmp_path / "g").resolve()),
        "CodeFormer": (tmp_path.resolve() / "models" / "Codeformer", (tmp_path / "c").resolve()),
    }
    plain = Paths.from_args(cmd_args.parse_args(["--data-dir", str(tmp_path)], {}))
    assert plain.face_restorer_dirs["GFPGAN"] == (tmp_path.resolve() / "models" / "GFPGAN",)


def test_files_are_identified_by_their_weights(restorers, model_dirs):
    gfpgan_dir, = model_dirs["GFPGAN"]
    codeformer_dir, extra_dir = model_dirs["CodeFormer"]
    assert inspect(gfpgan_dir / "restorer.pth").architecture == "GFPGAN"
    assert inspect(gfpgan_dir / "GFPGANv1.4.safetensors").architecture == "GFPGAN"
    assert inspect(extra_dir / "GFPGANv1.3.pth").architecture == "CodeFormer"
    assert restorers.names() == ["GFPGAN", "CodeFormer"]
    # Two GFPGAN files: the official release name wins over the first one in folder order.
    assert restorers.file("GFPGAN").path == gfpgan_dir / "GFPGANv1.4.safetensors"
    assert restorers.file("CodeFormer").path == extra_dir / "GFPGANv1.3.pth"


def test_codeformer_safetensors_is_found_too(tmp_path):
    torch.manual_seed(1)
    safetensors.torch.save_file(contiguous(CodeFormer().state_dict()), str(tmp_path / "weights.safetensors"))
    found = FaceRestorers({"CodeFormer": (tmp_path,)}, torch.device("cpu"))
    assert found.names() == ["CodeFormer"] and found.unsupported() == []
    assert found.file("CodeFormer").architecture == "CodeFormer"


def test_other_files_are_skipped_with_a_reason(restorers, model_dirs):
    codeformer_dir = model_dirs["CodeFormer"][0]
    reasons = {path.name: reason for path, reason in restorers.unsupported()}
    assert set(reasons) == {"codeformer.pth", "unknown.safetensors", "broken.pth"}
    assert "ESRGAN" in reasons["codeformer.pth"] and "not a GFPGAN or CodeFormer" in reasons["codeformer.pth"]
    assert "architecture" in reasons["unknown.safetensors"]
    assert str(codeformer_dir / "broken.pth") in reasons["broken.pth"]


def test_template_landmarks_align_to_themselves():
    rebuilt = landmarks_from_eyes(FFHQ_TEMPLATE_512[0], FFHQ_TEMPLATE_512[1])
    assert np.allclose(rebuilt, FFHQ_TEMPLATE_512, atol=1e-3)
    assert np.allclose(alignment_matrix(FFHQ_TEMPLATE_512), [[1, 0, 0], [0, 1, 0]], atol=1e-3)
    # Eyes twice as far apart and shifted: the derived nose and mouth follow the same similarity.
    scaled = landmarks_from_eyes(FFHQ_TEMPLATE_512[0] * 2 + 10, FFHQ_TEMPLATE_512[1] * 2 + 10)
    assert np.allclose(scaled, FFHQ_TEMPLATE_512 * 2 + 10, atol=1e-2)


def test_opencv_cascades_find_the_astronaut_face(astronaut):
    faces = HaarFaceDetector().detect(np.asarray(astronaut))
    assert len(faces) == 1
    face = faces[0]
    assert overlap(face.box, TRUE_FACE) > 0.6
    assert face.from_eyes
    x, y, w, h = face.box
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert x < left_eye[0] < x + w / 2 < right_eye[0] < x + w
    assert y < left_eye[1] < y + h / 2 and y < right_eye[1] < y + h / 2
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1]) < y + h


@pytest.mark.parametrize("name", ["GFPGAN", "CodeFormer"])
def test_restore_changes_only_the_face(restored, astronaut, name):
    result = restored[name]
    assert result.image.size == astronaut.size and result.image.mode == "RGB"
    assert len(result.faces) == 1 and overlap(result.faces[0].box, TRUE_FACE) > 0.6
    diff = np.abs(np.asarray(result.image, dtype=np.int16) - np.asarray(astronaut, dtype=np.int16)).max(axis=2)
    x, y, w, h = result.faces[0].box
    # The aligned crop reaches past the detector's box (chin, forehead), so allow half a face.
    outside = np.ones_like(diff, dtype=bool)
    outside[max(y - h // 2, 0):y + h + h // 2, max(x - w // 2, 0):x + w + w // 2] = False
    assert diff[outside].max() == 0
    # A random network's output is nothing like the photo: the middle of the face changed.
    assert (diff[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4] > 0).mean() > 0.9
    assert any("restored 1 face" in note for note in result.notes)


def test_visibility_blends_with_the_original(restored, astronaut):
    original = np.asarray(astronaut)
    full = np.asarray(restored["GFPGAN"].image)
    half = blend(original, full, 0.5).astype(np.float32)
    assert np.abs(half - (original.astype(np.float32) + full) / 2).max() <= 0.5
    assert np.array_equal(blend(original, full, 1.0), full)
    assert np.array_equal(blend(original, full, 0.0), original)


def test_visibility_zero_returns_the_original(restorers, astronaut):
    result = restorers.restore(astronaut, "CodeFormer", visibility=0)
    assert np.array_equal(np.asarray(result.image), np.asarray(astronaut))


def test_one_model_is_kept_loaded(restored, restorers):
    assert restorers.loaded == restorers.file("CodeFormer")


# The moon: OpenCV's "default" frontal cascade alone reports a face in it; the second cascade does not.
@pytest.mark.parametrize("picture", ["coffee", "moon", "flat"])
def test_image_without_a_face_is_returned_unchanged(restorers, picture):
    pixels = {"coffee": skimage.data.coffee,
              "moon": lambda: np.stack([skimage.data.moon()] * 3, axis=-1),
              "flat": lambda: np.full((300, 400, 3), (90, 140, 200), np.uint8)}[picture]()
    image = Image.fromarray(pixels)
    result = restorers.restore(image, "GFPGAN")
    assert np.array_equal(np.asarray(result.image), pixels)
    assert result.faces == [] and any("no face" in note for note in result.notes)


def test_faces_below_the_minimum_size_are_skipped(model_dirs, astronaut):
    strict = FaceRestorers(model_dirs, min_face_size=128)  # the astronaut's face is about 93 px
    result = strict.restore(astronaut, "GFPGAN")
    assert np.array_equal(np.asarray(result.image), np.asarray(astronaut))
    assert any("smaller than 128 px" in note for note in result.notes)
    assert strict.loaded is None  # nothing to restore, so no model was loaded


def test_unknown_restorer_is_an_error(restorers, astronaut):
    with pytest.raises(ValueError, match="available: GFPGAN, CodeFormer"):
        restorers.restore(astronaut, "RestoreFormer")


def test_txt2img_restore_faces_uses_the_chosen_restorer_and_says_so(restorers, tmp_path):
    model = load_tiny_model(tmp_path / "sd", "sd1")
    request = Txt2ImgRequest(prompt="a portrait", steps=2, width=64, height=64, seed=3, save_images=False,
                             restore_faces=True)
    result = txt2img(model, request, None, resources=Resources(face_restorers=restorers,
                                                                face_restoration_model="GFPGAN"))
    assert "Face restoration: GFPGAN" in result.infotexts[0]
    assert any("no face" in warning.lower() for warning in result.warnings)  # tiny random model: no faces
    missing = txt2img(model, request, None, resources=Resources(face_restorers=restorers,
                                                                 face_restoration_model="RestoreFormer"))
    assert "Face restoration" not in missing.infotexts[0]
    assert any("RestoreFormer" in warning for warning in missing.warnings)


def test_extras_restore_faces_then_upscale(restorers, astronaut):
    settings = ExtrasRequest(gfpgan_visibility=0.5, upscaler_1="Lanczos", upscaling_resize=1.5)
    result = run_extras(astronaut, settings, None, restorers)
    assert result.image.size == (768, 768)
    assert "GFPGAN visibility: 0.5" in result.info and "Postprocess upscaler: Lanczos" in result.info
    untouched = run_extras(astronaut, ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=1.5), None, restorers)
    assert np.abs(np.asarray(result.image, np.int16) - np.asarray(untouched.image, np.int16)).max() > 0
    no_codeformer = run_extras(astronaut, ExtrasRequest(codeformer_visibility=1.0), None,
                               FaceRestorers({}, torch.device("cpu")))
    assert any("CodeFormer is not installed" in note for note in no_codeformer.notes)
