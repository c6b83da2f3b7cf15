"""Write the CLIP BPE tokenizer files under configs/tokenizers/ from OpenAI's BPE merges file.

No model hub is reachable, so the tokenizer that SD1 (CLIP ViT-L), SD2 and SDXL (OpenCLIP) use is
rebuilt from `bpe_simple_vocab_16e6.txt.gz`, the merges file that the open_clip_torch wheel ships:

    pip download --no-deps open_clip_torch -d /tmp/oc
    python tools/build_clip_tokenizer.py --wheel /tmp/oc/open_clip_torch-*.whl

The output is deterministic: running it again gives byte-identical files. Two folders are written,
`clip/` (pads with <|endoftext|>, as CLIP ViT-L's tokenizer does) and `open_clip/` (pads with "!",
id 0, as the tokenizers of diffusers' SD2 and SDXL (tokenizer_2) releases do).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_SIZE = 49408
# CLIP uses the first 48,894 merges of the file: 49,408 minus 256 bytes, 256 end-of-word bytes, 2 specials.
MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2
MODEL_MAX_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
OPEN_CLIP_PAD_TOKEN = "!"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "configs" / "tokenizers"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table; BPE tokens are spelled in it."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


def read_bpe_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(BPE_MEMBER)


def parse_merges(bpe_gz: bytes) -> list[tuple[str, str]]:
    digest = hashlib.sha256(bpe_gz).hexdigest()
    if digest != BPE_SHA256:
        raise ValueError(f"unexpected BPE file: sha256 {digest}, expected {BPE_SHA256}")
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    # The first line is a version header, not a merge.
    merges = [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]
    if any(len(pair) != 2 for pair in merges):
        raise ValueError("malformed merge line in the BPE file")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> list[str]:
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [token + "</w>" for token in byte_tokens]
    vocab += ["".join(pair) for pair in merges]
    vocab += [START_TOKEN, END_TOKEN]
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} entries ({len(set(vocab))} distinct), expected {VOCAB_SIZE}")
    return vocab


def special_tokens(pad_token: str) -> dict[str, str]:
    return {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": pad_token}


def tokenizer_files(vocab: list[str], merges: list[tuple[str, str]], pad_token: str) -> dict[str, str]:
    special = special_tokens(pad_token)
    config = {
        **special,
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "tokenizer_class": "CLIPTokenizer",
    }
    return {
        "vocab.json": json.dumps({token: index for index, token in enumerate(vocab)}, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }


def write_tokenizers(bpe_gz: bytes, out_dir: Path) -> list[Path]:
    merges = parse_merges(bpe_gz)
    vocab = build_vocab(merges)
    written = []
    for folder, pad_token in (("clip", END_TOKEN), ("open_clip", OPEN_CLIP_PAD_TOKEN)):
        target = out_dir / folder
        target.mkdir(parents=True, exist_ok=True)
        for name, text in tokenizer_files(vocab, merges, pad_token).items():
            path = target / name
            # newline="\n" keeps the bytes identical on Windows too.
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheel", type=Path, help="an open_clip_torch wheel (it is read, not installed)")
    source.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz itself")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="default: configs/tokenizers")
    args = parser.parse_args(argv)
    bpe_gz = read_bpe_from_wheel(args.wheel) if args.wheel else args.bpe.read_bytes()
    for path in write_tokenizers(bpe_gz, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
