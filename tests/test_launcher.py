"""The launcher layer: launch.py, webui.sh, run_tests.sh and modules/app/launch_utils.py."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modules.app import cmd_args
from modules.app import launch_utils

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_FLAGS = ("--listen", "--port", "--ckpt", "--ckpt-dir", "--data-dir", "--vae-dir", "--api", "--nowebui",
                  "--no-half", "--precision", "--device-id", "--skip-torch-cuda-test", "--medvram", "--lowvram")
UNKNOWN_FLAG = "--no-such-flag-anywhere"


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without anything a user could set for the launcher."""
    environ = {name: value for name, value in os.environ.items()
               if name not in ("COMMANDLINE_ARGS", "REQS_FILE", "TORCH_COMMAND", "venv_dir", "python_cmd",
                               "install_dir")}
    environ.update(extra)
    return environ


def run(command: list[str], cwd: Path = ROOT, **environ: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=clean_environment(**environ), capture_output=True, text=True,
                          timeout=120)


def entry_point(name: str) -> Path:
    path = ROOT / name
    if not path.exists():
        pytest.skip(f"{name} is not written yet")
    return path


def assert_lists_flags(help_text: str) -> None:
    absent = [flag for flag in EXPECTED_FLAGS if flag not in help_text.split()
              and f"[{flag}" not in help_text]
    assert not absent, f"flags missing from --help: {absent}"


def write_requirements(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


PYYAML_VERSION = importlib.metadata.version("pyyaml")


# --- launch.py and webui.py -----------------------------------------------------------------

@pytest.mark.parametrize("script", ["launch.py", "webui.py"])
def test_help_lists_the_a1111_flags(script: str) -> None:
    result = run([sys.executable, str(entry_point(script)), "--help"])

    assert result.returncode == 0, result.stderr
    assert_lists_flags(result.stdout)


@pytest.mark.parametrize("script", ["launch.py", "webui.py"])
def test_unknown_flag_is_an_argparse_error_naming_it(script: str) -> None:
    result = run([sys.executable, str(entry_point(script)), "--listen", UNKNOWN_FLAG])

    assert result.returncode == 2
    assert UNKNOWN_FLAG in result.stderr


def test_launch_py_reads_commandline_args_from_the_environment(tmp_path: Path) -> None:
    result = run([sys.executable, str(ROOT / "launch.py")], cwd=tmp_path, COMMANDLINE_ARGS=f"--api {UNKNOWN_FLAG}")

    assert result.returncode == 2
    assert UNKNOWN_FLAG in result.stderr


# --- COMMANDLINE_ARGS -----------------------------------------------------------------------

def test_commandline_args_mean_the_same_as_flags() -> None:
    from_environment = cmd_args.parse_args([], {"COMMANDLINE_ARGS": "--port 9999 --listen"})
    from_flags = cmd_args.parse_args(["--port", "9999", "--listen"], {})

    assert from_environment == from_flags
    assert (from_flags.port, from_flags.listen) == (9999, True)


def test_a_flag_on_the_command_line_wins_over_commandline_args() -> None:
    args = cmd_args.parse_args(["--port", "8000"], {"COMMANDLINE_ARGS": "--port 9999"})

    assert args.port == 8000


def test_offline_environment_is_set_without_overriding_the_user() -> None:
    environ = {"HF_HUB_OFFLINE": "0"}

    launch_utils.set_offline_environment(environ)

    assert environ == {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                       "GRADIO_ANALYTICS_ENABLED": "False", "DO_NOT_TRACK": "1"}


# --- Requirements ---------------------------------------------------------------------------

def test_satisfied_requirements_install_nothing_and_are_fast(tmp_path: Path, capsys) -> None:
    included = write_requirements(tmp_path / "included.txt", "packaging>=20")
    requirements = write_requirements(
        tmp_path / "requirements.txt",
        "# the installed versions, so nothing needs installing",
        f"-r {included.name}",
        f"PyYAML=={PYYAML_VERSION}  # pinned exactly",
        "--extra-index-url https://example.invalid/simple",
        'no-such-distribution-for-tests==1.0; python_version < "3"',
    )
    args = cmd_args.parse_args(["--skip-torch-cuda-test"], {})

    started = time.perf_counter()
    outcome = launch_utils.prepare_environment(args, {"REQS_FILE": str(requirements)})
    elapsed = time.perf_counter() - started

    assert outcome.requirements_file == requirements
    assert outcome.missing_before == ()
    assert outcome.commands_run == ()
    assert elapsed < 1.0
    assert capsys.readouterr().out.strip().splitlines() == [
        "Requirements from requirements.txt are satisfied.",
        "Requirements from requirements-nodeps.txt are satisfied."]


def test_unsatisfied_requirements_are_reported_missing(tmp_path: Path) -> None:
    requirements = write_requirements(
        tmp_path / "requirements.txt",
        f"pyyaml=={PYYAML_VERSION}",
        "pyyaml>=999",
        "no-such-distribution-for-tests==1.0",
    )

    assert launch_utils.missing_requirements(requirements) == ["pyyaml>=999", "no-such-distribution-for-tests==1.0"]


def test_skip_install_reports_what_is_missing_and_installs_nothing(tmp_path: Path, capsys) -> None:
    requirements = write_requirements(tmp_path / "requirements.txt", "no-such-distribution-for-tests==1.0")

    outcome = launch_utils.ensure_requirements(requirements, {}, skip_install=True)

    assert outcome.missing_before == ("no-such-distribution-for-tests==1.0",)
    assert outcome.commands_run == ()
    assert "no-such-distribution-for-tests==1.0" in capsys.readouterr().out


def test_the_project_requirements_are_satisfied_in_this_environment() -> None:
    assert launch_utils.missing_requirements(ROOT / "requirements-test.txt") == []


def test_missing_torch_runs_torch_command_first_then_pip(tmp_path: Path) -> None:
    requirements = write_requirements(tmp_path / "requirements.txt", "torch==2.14.1", "pyyaml>=6")
    environ = {"TORCH_COMMAND": "pip install torch==2.14.1 --extra-index-url https://example.invalid/cpu"}

    commands = launch_utils.plan_install_commands(requirements, ["torch==2.14.1"], environ, False, "py")

    assert commands == [
        ["py", "-m", "pip", "install", "torch==2.14.1", "--extra-index-url", "https://example.invalid/cpu"],
        ["py", "-m", "pip", "install", "-r", str(requirements)],
    ]


def test_reinstall_torch_without_torch_command_uses_the_pins(tmp_path: Path) -> None:
    requirements = write_requirements(tmp_path / "requirements.txt", "torch==2.14.1", "torchvision==0.29.1",
                                      "pyyaml>=6")

    commands = launch_utils.plan_install_commands(requirements, [], {}, True, "py")

    assert commands == [["py", "-m", "pip", "install", "--force-reinstall", "--no-deps",
                         "torch==2.14.1", "torchvision==0.29.1"]]


def test_missing_packages_other_than_torch_leave_torch_command_unused(tmp_path: Path) -> None:
    requirements = write_requirements(tmp_path / "requirements.txt", "torch==2.14.1", "pyyaml>=999")

    commands = launch_utils.plan_install_commands(requirements, ["pyyaml>=999"], {"TORCH_COMMAND": "pip install x"},
                                                  False, "py")

    assert commands == [["py", "-m", "pip", "install", "-r", str(requirements)]]


# --- Python version and device --------------------------------------------------------------

def test_python_version_range() -> None:
    assert [launch_utils.python_version_supported(version) for version in ((3, 9), (3, 10), (3, 12), (3, 13))] \
        == [False, True, True, False]
    with pytest.raises(SystemExit, match="Python 3.9 is not supported"):
        launch_utils.check_python_version((3, 9, 1), skip=False)
    launch_utils.check_python_version((3, 9, 1), skip=True)


def test_no_gpu_is_a_notice_not_an_error() -> None:
    assert "CPU" in launch_utils.torch_device_notice(False)
    assert launch_utils.torch_device_notice(True) is None


# --- webui.sh -------------------------------------------------------------------------------

def test_shell_scripts_parse() -> None:
    for script in ("webui.sh", "webui-user.sh", "run_tests.sh", ".ci/run"):
        result = run(["bash", "-n", str(ROOT / script)])
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_webui_sh_with_an_existing_venv_from_another_folder(tmp_path: Path) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run inside a venv")
    result = run(["bash", str(ROOT / "webui.sh"), "--help"], cwd=tmp_path, venv_dir=sys.prefix)

    assert result.returncode == 0, result.stderr
    assert_lists_flags(result.stdout)


def test_webui_sh_without_a_venv_uses_python_cmd(tmp_path: Path) -> None:
    result = run(["bash", str(ROOT / "webui.sh"), "--help"], cwd=tmp_path, venv_dir="-", python_cmd=sys.executable)

    assert result.returncode == 0, result.stderr
    assert_lists_flags(result.stdout)


def test_webui_sh_passes_commandline_args_and_launch_py_exit_status(tmp_path: Path) -> None:
    result = run(["bash", str(ROOT / "webui.sh")], cwd=tmp_path, venv_dir="-", python_cmd=sys.executable,
                 COMMANDLINE_ARGS=UNKNOWN_FLAG)

    assert result.returncode == 2
    assert UNKNOWN_FLAG in result.stderr


def interpreter_claiming_python_3_9(tmp_path: Path) -> Path:
    """This interpreter, but `-c` snippets (the version checks) see version 3.9: an old Python
    cannot be counted on to be installed."""
    wrapper = tmp_path / "python3.9"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then exec "{sys.executable}" -c "import sys; sys.version_info = (3, 9, 18); $2"; fi\n'
        f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_webui_sh_refuses_an_unsupported_python_unless_told(tmp_path: Path) -> None:
    old_python = str(interpreter_claiming_python_3_9(tmp_path))

    refused = run(["bash", str(ROOT / "webui.sh"), "--help"], cwd=tmp_path, venv_dir="-", python_cmd=old_python)
    accepted = run(["bash", str(ROOT / "webui.sh"), "--skip-python-version-check", "--help"], cwd=tmp_path,
                   venv_dir="-", python_cmd=old_python)

    assert refused.returncode == 1
    assert "Python 3.9" in refused.stderr and "not supported" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert_lists_flags(accepted.stdout)


def test_webui_sh_creates_a_missing_venv_that_launch_utils_can_work_in(tmp_path: Path) -> None:
    venv = tmp_path / "fresh venv"

    result = run(["bash", str(ROOT / "webui.sh"), "--help"], cwd=tmp_path, venv_dir=str(venv),
                 python_cmd=sys.executable)

    assert result.returncode == 0, result.stderr
    assert "Creating venv" in result.stdout
    assert_lists_flags(result.stdout)
    # A fresh venv has no `packaging`: the check must still run, and count everything as missing.
    fresh = run([str(venv / "bin" / "python"), "-c",
                 "from modules.app import launch_utils as l; print(len(l.missing_requirements(l.INSTALL_DIR / 'requirements.txt')))"])
    assert fresh.returncode == 0, fresh.stderr
    assert int(fresh.stdout) == len(launch_utils.read_requirement_lines(ROOT / "requirements.txt"))
