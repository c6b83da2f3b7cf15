"""Face restoration with GFPGAN and CodeFormer models, through spandrel, with no downloads.

A model file is a GFPGAN or a CodeFormer by what spandrel detects in its weights, never by its
name. Faces are found with OpenCV's Haar cascades, which ship inside the opencv package, so
nothing is fetched at run time (facexlib's RetinaFace would download its weights). Each face is
aligned to the FFHQ 512x512 template the models were trained on, restored, warped back and pasted
under a feathered mask, so pixels away from the faces are left exactly as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from PIL import Image

from modules.postprocess import spandrel_models
from modules.postprocess.spandrel_models import UnsupportedFile

FACE_SIZE = 512
MIN_FACE_SIZE = 32  # smaller faces carry too little detail to restore; they are skipped with a note
DEFAULT_CODEFORMER_WEIGHT = 0.5  # AUTOMATIC1111's code_former_weight

# spandrel architecture id -> the name AUTOMATIC1111 shows for that restorer.
RESTORER_NAMES = {"GFPGAN": "GFPGAN", "CodeFormer": "CodeFormer"}
# The folder AUTOMATIC1111 keeps each restorer's files in, under models/.
RESTORER_FOLDERS = {"GFPGAN": "GFPGAN", "CodeFormer": "Codeformer"}


def not_installed_note(name: str) -> str:
    return f"{name} is not installed: put its .pth in models/{RESTORER_FOLDERS.get(name, name)}"


# When several files hold the same architecture, the official release files win, in this order.
PREFERRED_STEMS = {
    "GFPGAN": ("gfpganv1.4", "gfpganv1.3", "gfpganv1.2", "gfpgancleanv1-noce-c2"),
    "CodeFormer": ("codeformer-v0.1.0", "codeformer"),
}

# Five landmarks (left eye, right eye, nose tip, left and right mouth corner, in image order) of
# the FFHQ-aligned 512x512 face used by facexlib when GFPGAN and CodeFormer were trained.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)
# Grey that facexlib fills the aligned crop with where it runs past the image border.
BORDER_FILL = (135, 133, 132)
# The face in aligned space (centre, semi-axes), from the template: cheeks to cheeks, brow to chin.
# Without a face-parsing model this ellipse is what decides which pixels a restore may change.
FACE_ELLIPSE_CENTER = (256, 288)
FACE_ELLIPSE_AXES = (140, 172)

# Where a frontal Haar box puts the eyes, as fractions of the box (measured on real photos); used
# only when the eye cascade does not find both eyes.
BOX_EYES = np.array([[0.28, 0.385], [0.72, 0.385]], dtype=np.float32)
DETECT_MAX_SIDE = 1024  # the cascade runs on a copy no larger than this: big images cost seconds
MIN_CASCADE_AGREEMENT = 0.4  # overlap (IoU) at which the two face cascades are taken to agree
EYE_ROI_WIDTH = 160  # face crops are resized to this before looking for eyes, so eye sizes are stable


@dataclass(frozen=True)
class FaceRestorerFile:
    name: str  # "GFPGAN" or "CodeFormer"
    path: Path
    architecture: str  # spandrel's architecture id


@dataclass(frozen=True, eq=False)  # eq=False: comparing the landmark arrays has no single truth value
class DetectedFace:
    box: tuple[int, int, int, int]  # x, y, width, height in image pixels
    landmarks: np.ndarray  # (5, 2) float32, same order as FFHQ_TEMPLATE_512
    from_eyes: bool  # True when the eyes were found; False for the estimate from the box alone


@dataclass
class RestoreResult:
    image: Image.Image
    notes: list[str] = field(default_factory=list)
    faces: list[DetectedFace] = field(default_factory=list)  # the faces that were restored


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """Every face in an RGB uint8 array, small ones included (the caller decides what to skip)."""
        ...


# ---------------------------------------------------------------------------------------------
# Which files are face restorers


def _candidate_files(dirs: Mapping[str, Sequence[Path]]) -> list[Path]:
    return spandrel_models.candidate_files(folder for folders in dirs.values() for folder in folders)


def _preference(file: FaceRestorerFile, order: int) -> tuple[int, int]:
    stems = PREFERRED_STEMS.get(file.architecture, ())
    stem = file.path.stem.lower()
    rank = stems.index(stem) if stem in stems else len(stems)
    return rank, order


# ---------------------------------------------------------------------------------------------
# Finding faces


def _cascade(name: str) -> "cv2.CascadeClassifier":
    if not hasattr(cv2, "CascadeClassifier"):
        # OpenCV 5 dropped the cascades from the main package; the project pins OpenCV 4.
        raise RuntimeError(f"this OpenCV ({cv2.__version__}) has no CascadeClassifier; "
                           "install opencv-python-headless 4.x")
    classifier = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / name))
    if classifier.empty():
        raise RuntimeError(f"OpenCV's {name} is missing from {cv2.data.haarcascades}")
    return classifier


def landmarks_from_eyes(left_eye: np.ndarray, right_eye: np.ndarray) -> np.ndarray:
    """Five landmarks from the two eye centres: the similarity that puts the template's eyes on
    these eyes also places the template's nose and mouth corners, which is the best a detector
    without landmark output can say about them."""
    src = FFHQ_TEMPLATE_512[:2]
    dst = np.array([left_eye, right_eye], dtype=np.float32)
    src_vec, dst_vec = src[1] - src[0], dst[1] - dst[0]
    # Similarity as a complex number: z -> a * z + b.
    a = complex(*dst_vec) / complex(*src_vec)
    b = complex(*dst[0]) - a * complex(*src[0])
    points = [a * complex(x, y) + b for x, y in FFHQ_TEMPLATE_512]
    return np.array([[p.real, p.imag] for p in points], dtype=np.float32)


def landmarks_from_box(box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    eyes = BOX_EYES * np.array([w, h], dtype=np.float32) + np.array([x, y], dtype=np.float32)
    return landmarks_from_eyes(eyes[0], eyes[1])


def _overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


class HaarFaceDetector:
    """Frontal faces from OpenCV's Haar cascades, eyes from its eye cascade inside each face."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faces: list[cv2.CascadeClassifier] | None = None
        self._eyes: cv2.CascadeClassifier | None = None

    def _classifiers(self) -> tuple[list["cv2.CascadeClassifier"], "cv2.CascadeClassifier"]:
        with self._lock:
            if self._faces is None or self._eyes is None:
                self._faces = [_cascade("haarcascade_frontalface_default.xml"),
                               _cascade("haarcascade_frontalface_alt2.xml")]
                self._eyes = _cascade("haarcascade_eye.xml")
            return self._faces, self._eyes

    def find_boxes(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes in `gray` (equalised), of any size the cascades can see.

        A box counts only when both frontal cascades find it. Alone, "default" fires on bricks,
        gravel, fur and the moon; alt2 rarely does, and on frontal faces the two agree (98 of
        scikit-image's 100 LFW faces, none of its 100 non-faces)."""
        (default, alt2), _ = self._classifiers()
        scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
        small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found, confirming = (cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
                             for cascade in (default, alt2))
        boxes = [tuple(int(b) for b in box) for box in found
                 if any(_overlap(box, other) >= MIN_CASCADE_AGREEMENT for other in confirming)]
        return [tuple(int(round(v / scale)) for v in box) for box in boxes]

    def find_eyes(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
        """(2, 2) eye centres in image order, or None when the cascade does not give a plausible pair."""
        _, eye_cascade = self._classifiers()
        x, y, w, h = box
        # Eyes sit in the upper half of a frontal box; looking only there avoids nostrils and mouth.
        top, bottom = y + int(0.15 * h), y + int(0.60 * h)
        roi = gray[max(top, 0):max(bottom, 0), max(x, 0):max(x + w, 0)]
        if roi.size == 0:
            return None
        scale = EYE_ROI_WIDTH / roi.shape[1]
        roi = cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        found = eye_cascade.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3,
                                             minSize=(EYE_ROI_WIDTH // 10,) * 2, maxSize=(EYE_ROI_WIDTH // 3,) * 2)
        centres = [((ex + ew / 2) / scale + max(x, 0), (ey + eh / 2) / scale + max(top, 0), ew)
                   for ex, ey, ew, eh in found]
        middle = x + w / 2
        left = [c for c in centres if c[0] < middle]
        right = [c for c in centres if c[0] >= middle]
        if not left or not right:
            return None
        # The largest candidate on each side: small hits are usually eyebrows or eyelid corners.
        (lx, ly, _), (rx, ry, _) = max(left, key=lambda c: c[2]), max(right, key=lambda c: c[2])
        distance = np.hypot(rx - lx, ry - ly)
        if not (0.25 * w <= distance <= 0.75 * w and abs(ry - ly) <= 0.25 * w):
            return None
        return np.array([[lx, ly], [rx, ry]], dtype=np.float32)

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        faces = []
        for box in self.find_boxes(gray):
            eyes = self.find_eyes(gray, box)
            landmarks = landmarks_from_eyes(eyes[0], eyes[1]) if eyes is not None else landmarks_from_box(box)
            faces.append(DetectedFace(box, landmarks, eyes is not None))
        return faces


# ---------------------------------------------------------------------------------------------
# Aligning, restoring and pasting one face


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """2x3 similarity from image coordinates to the 512x512 aligned face."""
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), FFHQ_TEMPLATE_512, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks: fall back to the exact fit on the two eyes
        matrix, _ = cv2.estimateAffinePartial2D(landmarks[:2].astype(np.float32), FFHQ_TEMPLATE_512[:2])
    return matrix


def _face_mask() -> np.ndarray:
    mask = np.zeros((FACE_SIZE, FACE_SIZE), dtype=np.float32)
    cv2.ellipse(mask, FACE_ELLIPSE_CENTER, FACE_ELLIPSE_AXES, 0, 0, 360, 1.0, thickness=-1)
    return mask


def _paste_face(image: np.ndarray, restored: np.ndarray, matrix: np.ndarray) -> None:
    """Warp the restored 512x512 face back into `image` (float32 RGB, modified in place) under a
    feathered mask. Only the face's bounding region is warped, so big images stay cheap."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]], np.float32)
    mapped = corners @ inverse.T
    height, width = image.shape[:2]
    x0, y0 = (max(int(np.floor(v)) - 1, 0) for v in mapped.min(axis=0))
    x1, y1 = min(int(np.ceil(mapped[:, 0].max())) + 1, width), min(int(np.ceil(mapped[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(restored.astype(np.float32), shifted, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(_face_mask(), shifted, size, flags=cv2.INTER_LINEAR)
    # Feather in image space so the soft edge scales with the face, as facexlib does: erode so the
    # blend never reaches the crop's interpolated rim, then blur for a seamless edge.
    edge = max(int(np.sqrt(float(mask.sum()))) // 20, 1)
    mask = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
    mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)[..., None]
    region = image[y0:y1, x0:x1]
    region += mask * (face - region)


def blend(original: np.ndarray, restored: np.ndarray, visibility: float) -> np.ndarray:
    """original + visibility * (restored - original), as uint8. Where the two are equal the
    original's value comes back exactly, so untouched pixels stay bit-identical."""
    mixed = original.astype(np.float32) + visibility * (restored.astype(np.float32) - original.astype(np.float32))
    return mixed.round().clip(0, 255).astype(np.uint8)


def _to_model_input(face: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Both networks were trained on RGB in [-1, 1].
    tensor = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return tensor.to(device, dtype)


def _from_model_output(tensor: torch.Tensor) -> np.ndarray:
    array = ((tensor[0].float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).cpu().numpy()
    return array.round().clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The registry users talk to


class FaceRestorers:
    """The GFPGAN and CodeFormer files found in the face-restorer folders; keeps the last used
    model loaded, one at a time."""

    def __init__(self, dirs: Mapping[str, Sequence[Path]], device: torch.device = torch.device("cpu"),
                 half: bool = False, detector: FaceDetector | None = None,
                 min_face_size: int = MIN_FACE_SIZE):
        self.dirs = {kind: tuple(map(Path, folders)) for kind, folders in dirs.items()}
        self.device = torch.device(device)
        self.half = half and self.device.type == "cuda"  # fp16 on a CPU is slower and less exact
        self.detector: FaceDetector = detector or HaarFaceDetector()
        self.min_face_size = min_face_size
        self._lock = threading.RLock()
        self._loaded: tuple[FaceRestorerFile, object] | None = None
        self._facts = spandrel_models.FactsCache()
        self._files: dict[str, FaceRestorerFile] = {}
        self._unsupported: list[UnsupportedFile] = []
        self.refresh()

    # -- discovery

    def refresh(self) -> list[str]:
        """Rescan the folders. Returns the restorer names now available."""
        found: list[FaceRestorerFile] = []
        unsupported: list[UnsupportedFile] = []
        for path in _candidate_files(self.dirs):
            facts = self._facts.facts(path)
            if isinstance(facts, Exception):
                unsupported.append(UnsupportedFile(path, str(facts)))
            elif facts.architecture not in RESTORER_NAMES:
                unsupported.append(UnsupportedFile(
                    path, f"{facts.architecture} weights, not a GFPGAN or CodeFormer face restorer"))
            else:
                found.append(FaceRestorerFile(RESTORER_NAMES[facts.architecture], path, facts.architecture))
        files: dict[str, FaceRestorerFile] = {}
        for order, file in sorted(enumerate(found), key=lambda item: _preference(item[1], item[0])):
            files.setdefault(file.name, file)
        with self._lock:
            self._files, self._unsupported = files, unsupported
            if self._loaded is not None and self._loaded[0] not in files.values():
                self._loaded = None  # its file is gone or no longer the one picked for its name
        return self.names()

    def names(self) -> list[str]:
        return [name for name in RESTORER_NAMES.values() if name in self._files]

    def file(self, name: str) -> FaceRestorerFile | None:
        return self._files.get(name)

    def unsupported(self) -> list[UnsupportedFile]:
        return list(self._unsupported)

    # -- models

    def _model(self, file: FaceRestorerFile):
        """The spandrel descriptor for `file`, loading it (and dropping any other) if needed."""
        with self._lock:
            if self._loaded is None or self._loaded[0] != file:
                self._loaded = None  # free the previous model first: one in memory at a time
                # spandrel knows which networks break in fp16; both of these do today.
                self._loaded = (file, spandrel_models.load(file.path, self.device, self.half))
            return self._loaded[1]

    @property
    def loaded(self) -> FaceRestorerFile | None:
        """The file whose model is in memory, if any."""
        loaded = self._loaded
        return loaded[0] if loaded is not None else None

    def unload(self) -> None:
        with self._lock:
            self._loaded = None

    @torch.inference_mode()
    def _restore_crop(self, descriptor, face: np.ndarray, codeformer_weight: float) -> np.ndarray:
        tensor = _to_model_input(face, self.device, descriptor.dtype)
        if descriptor.architecture.id == "CodeFormer":
            # weight is the fidelity: 0 trusts the codebook most, 1 keeps closest to the input.
            output = descriptor.model(tensor, weight=codeformer_weight, adain=True)[0]
        else:
            # The stored noise instead of fresh noise: the same image restores the same way twice.
            output = descriptor.model(tensor, return_rgb=False, randomize_noise=False)[0]
        return _from_model_output(output)

    # -- restoring

    def restore(self, image: Image.Image, name: str, visibility: float = 1.0,
                codeformer_weight: float = DEFAULT_CODEFORMER_WEIGHT) -> RestoreResult:
        """Restore every face in `image` with the restorer `name` ("GFPGAN" or "CodeFormer"), then
        blend the result over the original by `visibility` (0 gives the original back)."""
        file = self.file(name)
        if file is None:
            raise ValueError(f"unknown face restorer {name!r}; available: {', '.join(self.names()) or 'none'}")
        visibility = min(max(float(visibility), 0.0), 1.0)
        if visibility == 0.0:
            return RestoreResult(image.copy(), ["visibility is 0: image left unchanged"])
        rgb = np.asarray(image.convert("RGB"))
        found = self.detector.detect(rgb)
        faces = [f for f in found if min(f.box[2:]) >= self.min_face_size]
        notes = self._detection_notes(faces, [f for f in found if min(f.box[2:]) < self.min_face_size])
        if not faces:
            return RestoreResult(image.copy(), notes)
        work = rgb.astype(np.float32)
        weight = min(max(float(codeformer_weight), 0.0), 1.0)
        with self._lock:  # one restore at a time: the loaded model is shared
            # Loaded outside inference mode, so its weights are ordinary tensors for later callers.
            descriptor = self._model(file)
            for face in faces:
                matrix = alignment_matrix(face.landmarks)
                crop = cv2.warpAffine(rgb, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_FILL)
                _paste_face(work, self._restore_crop(descriptor, crop, weight), matrix)
        return RestoreResult(self._to_image(blend(rgb, work, visibility), image), notes, faces)

    def _detection_notes(self, faces: list[DetectedFace], small: list[DetectedFace]) -> list[str]:
        notes = []
        if small:
            sizes = ", ".join(f"{min(f.box[2:])} px" for f in small)
            notes.append(f"{len(small)} face(s) smaller than {self.min_face_size} px skipped ({sizes})")
        if not faces:
            notes.append(f"no face {'large enough ' if small else ''}found: image left unchanged")
        else:
            from_box = sum(not f.from_eyes for f in faces)
            notes.append(f"restored {len(faces)} face(s)" +
                         (f", {from_box} aligned from the face box only (eyes not found)" if from_box else ""))
        return notes

    @staticmethod
    def _to_image(rgb: np.ndarray, original: Image.Image) -> Image.Image:
        result = Image.fromarray(rgb, "RGB")
        if original.mode in ("RGBA", "LA") or (original.mode == "P" and "transparency" in original.info):
            result.putalpha(original.convert("RGBA").getchannel("A"))  # keep transparency as it was
        return result
