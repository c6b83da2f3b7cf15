#!/usr/bin/env bash
# Start the web UI: choose Python, create and activate the venv, then run launch.py, which
# installs what is missing and starts the app. Settings go in webui-user.sh, next to this file.
#
# Sourcing this file (as run_tests.sh does) only defines the functions below.

SUPPORTED_PYTHON_LOW="3.10"
SUPPORTED_PYTHON_HIGH="3.12"

# python_cmd when set; otherwise the first interpreter that actually runs (a name can exist and
# still fail: pyenv shims do). Exits with a message when there is none.
pick_python() {
    local candidate
    if [[ -n "${python_cmd:-}" ]]; then
        if "$python_cmd" -c "import sys" >/dev/null 2>&1; then
            echo "$python_cmd"
            return 0
        fi
        echo "python_cmd=$python_cmd does not run: fix it in webui-user.sh" >&2
        exit 1
    fi
    for candidate in python3.12 python3.11 python3.10 python3; do
        if "$candidate" -c "import sys" >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    echo "No Python found: install Python $SUPPORTED_PYTHON_LOW to $SUPPORTED_PYTHON_HIGH" \
         "or set python_cmd in webui-user.sh" >&2
    exit 1
}

python_version_of() {
    "$1" -c "import sys; print('%d.%d' % sys.version_info[:2])" 2>/dev/null
}

# True when the interpreter is within the supported range.
python_version_supported() {
    "$1" -c "import sys; sys.exit(not ((${SUPPORTED_PYTHON_LOW/./, }) <= sys.version_info[:2] <= (${SUPPORTED_PYTHON_HIGH/./, })))" \
        >/dev/null 2>&1
}

# Exit with a clear message when the interpreter is outside the supported range, unless told not to.
require_supported_python() {
    local python="$1" skip_check="$2"
    [[ "$skip_check" == 1 ]] && return 0
    if ! python_version_supported "$python"; then
        echo "Python $(python_version_of "$python") ($python) is not supported: use Python" \
             "$SUPPORTED_PYTHON_LOW to $SUPPORTED_PYTHON_HIGH (set python_cmd in webui-user.sh)," \
             "or add --skip-python-version-check to go on anyway." >&2
        exit 1
    fi
}

# Create the venv with the given interpreter; a half-made venv is removed so the next run retries.
create_venv() {
    local python="$1" venv_path="$2"
    echo "Creating venv in $venv_path with $python ($(python_version_of "$python"))"
    if ! "$python" -m venv "$venv_path"; then
        rm -rf -- "$venv_path"
        echo "Could not create a venv with $python. On Debian/Ubuntu: apt install python3-venv" >&2
        exit 1
    fi
}

main() {
    local script_dir
    script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
    if [[ -f "$script_dir/webui-user.sh" ]]; then
        # shellcheck source=webui-user.sh
        source "$script_dir/webui-user.sh"
    fi

    install_dir="${install_dir:-$script_dir}"
    venv_dir="${venv_dir:-venv}"
    # launch.py (through modules/app/cmd_args.py) reads these from the environment.
    export COMMANDLINE_ARGS TORCH_COMMAND REQS_FILE

    local skip_version_check=0
    case " ${COMMANDLINE_ARGS:-} $* " in
        *" --skip-python-version-check "*) skip_version_check=1 ;;
    esac

    # As in A1111, the app runs from the install folder, so relative paths in flags mean the same
    # wherever webui.sh is started from.
    cd -- "$install_dir" || { echo "Cannot enter install_dir: $install_dir" >&2; exit 1; }

    local python
    if [[ "$venv_dir" == "-" ]]; then
        python="$(pick_python)" || exit 1
    else
        if [[ ! -x "$venv_dir/bin/python" ]]; then
            local base_python
            base_python="$(pick_python)" || exit 1
            require_supported_python "$base_python" "$skip_version_check"
            create_venv "$base_python" "$venv_dir"
        fi
        # shellcheck source=/dev/null
        source "$venv_dir/bin/activate"
        python="$venv_dir/bin/python"
    fi
    require_supported_python "$python" "$skip_version_check"

    exec "$python" -u "$install_dir/launch.py" "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
