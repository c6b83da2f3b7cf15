"""Where things live on disk. Built once from the flags; passed in, never global."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

INSTALL_DIR = Path(__file__).resolve().parents[2]
CONFIGS_DIR = INSTALL_DIR / "configs"
# The models that ship with the product live in the install's models/ folder: the embedded default
# checkpoint (in the repository) and R-ESRGAN 4x+ (converted at setup by
# tools/convert_realesrgan_ncnn.py). --data-dir and --models-dir must not hide them, so they are
# listed after the user's own folders' files, whatever those folders are.
SHIPPED_MODELS_DIR = INSTALL_DIR / "models"
SHIPPED_CHECKPOINTS = (SHIPPED_MODELS_DIR / "Stable-diffusion" / "embedded-shapes-v1.safetensors",)
SHIPPED_UPSCALERS = MappingProxyType({"RealESRGAN": (SHIPPED_MODELS_DIR / "RealESRGAN" / "RealESRGAN_x4plus.pth",)})


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    models_dir: Path
    outputs_dir: Path
    checkpoint_dirs: tuple[Path, ...]
    vae_dirs: tuple[Path, ...]
    cache_file: Path
    config_file: Path
    upscaler_dirs: dict[str, tuple[Path, ...]]
    face_restorer_dirs: dict[str, tuple[Path, ...]]
    lora_dirs: tuple[Path, ...]
    embeddings_dir: Path
    styles_file: Path
    # Files, not folders: listed after the folders' files, each only when no file of its name was found.
    shipped_checkpoints: tuple[Path, ...] = ()
    shipped_upscalers: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Paths":
        data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else INSTALL_DIR
        models_dir = Path(args.models_dir).expanduser().resolve() if getattr(args, "models_dir", None) \
            else data_dir / "models"
        outputs_dir = Path(args.outdir).expanduser().resolve() if getattr(args, "outdir", None) \
            else data_dir / "outputs"
        checkpoint_dirs = [models_dir / "Stable-diffusion"]
        if args.ckpt_dir:
            checkpoint_dirs.append(Path(args.ckpt_dir).expanduser().resolve())
        vae_dirs = [models_dir / "VAE"]
        if args.vae_dir:
            vae_dirs.append(Path(args.vae_dir).expanduser().resolve())
        upscaler_flags = {"ESRGAN": "esrgan_models_path", "RealESRGAN": "realesrgan_models_path",
                          "SwinIR": "swinir_models_path", "DAT": "dat_models_path", "HAT": None}
        upscaler_dirs = {}
        for kind, flag in upscaler_flags.items():
            extra = getattr(args, flag, None) if flag else None
            upscaler_dirs[kind] = (models_dir / kind,) + ((Path(extra).expanduser().resolve(),) if extra else ())
        # AUTOMATIC1111's folder names; the files' contents decide which restorer each one is.
        face_restorer_flags = {"GFPGAN": ("GFPGAN", "gfpgan_models_path"),
                               "CodeFormer": ("Codeformer", "codeformer_models_path")}
        face_restorer_dirs = {}
        for kind, (folder, flag) in face_restorer_flags.items():
            extra = getattr(args, flag, None)
            face_restorer_dirs[kind] = (models_dir / folder,) + ((Path(extra).expanduser().resolve(),) if extra else ())
        lora_dirs = [models_dir / "Lora", models_dir / "LyCORIS"]
        if getattr(args, "lora_dir", None):
            lora_dirs.insert(0, Path(args.lora_dir).expanduser().resolve())
        embeddings_dir = Path(args.embeddings_dir).expanduser().resolve() if getattr(args, "embeddings_dir", None) \
            else data_dir / "embeddings"
        with_shipped = not getattr(args, "no_shipped_models", False)
        return cls(
            shipped_checkpoints=SHIPPED_CHECKPOINTS if with_shipped else (),
            shipped_upscalers=dict(SHIPPED_UPSCALERS) if with_shipped else {},
            embeddings_dir=embeddings_dir,
            styles_file=data_dir / "styles.csv",
            upscaler_dirs=upscaler_dirs,
            face_restorer_dirs=face_restorer_dirs,
            lora_dirs=tuple(lora_dirs),
            data_dir=data_dir,
            models_dir=models_dir,
            outputs_dir=outputs_dir,
            checkpoint_dirs=tuple(checkpoint_dirs),
            vae_dirs=tuple(vae_dirs),
            cache_file=data_dir / "cache" / "hashes.json",
            config_file=data_dir / "config.json",
        )
