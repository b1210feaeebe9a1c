# Shared setup for the scripts: sourced, not run. Creates/updates .venv and finds the data.
# SSAL_PYTHON picks the interpreter that creates the venv (default: python3).

ssal_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ssal_ensure_venv() {  # $1: extras, e.g. "dev" or ""
    local extras="$1" spec="." stamp want
    [ -n "$extras" ] && spec=".[$extras]"
    cd "$ssal_root" || return 1
    if [ ! -x .venv/bin/python ]; then
        echo "ssal: creating .venv" >&2
        "${SSAL_PYTHON:-python3}" -m venv .venv || return 1
    fi
    # reinstall only when the dependency spec changed (pyproject, constraints, extras)
    want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$extras"
    stamp=".venv/.ssal-installed"
    # an install with extras also serves a command that needs none (the scripts, under the tests)
    if [ -z "$extras" ] && [[ "$(cat "$stamp" 2>/dev/null)" == "$want"* ]]; then
        return 0
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "ssal: installing $spec with constraints.txt (first time: a few minutes, torch is large)" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$spec" \
            || { echo "ssal: error: pip install failed (see above)" >&2; return 1; }
        echo "$want" > "$stamp"
    fi
}

ssal_ensure_fashion_mnist() {
    local dir=/usr/share/datasets/fashion-mnist
    [ -f "$dir/train-images-idx3-ubyte.gz" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "ssal: installing the Debian package dataset-fashion-mnist" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
            || { echo "ssal: error: apt-get install dataset-fashion-mnist failed" >&2; return 1; }
    else
        echo "ssal: error: Fashion-MNIST not found in $dir; run 'sudo apt-get install dataset-fashion-mnist'" \
             "or put the four idx .gz files in a folder and pass data.root=FOLDER" >&2
        return 1
    fi
}

ssal_ensure_chromium() {  # the labeling page's tests drive a real browser: Debian's chromium + chromium-driver
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "ssal: installing the Debian packages chromium and chromium-driver (for the labeling page's tests)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
            >/dev/null || { echo "ssal: error: apt-get install chromium chromium-driver failed" >&2; return 1; }
    else
        echo "ssal: error: the labeling page's tests need Chromium; run" \
             "'sudo apt-get install chromium chromium-driver'" >&2
        return 1
    fi
}

# Label Studio for the tests that run a real server (tests/test_label_studio_server.py), in its own venv
# .lsvenv: its pins (Django, pydantic, ...) are not ssal's. sentry-sdk 3 makes 1.23.2 fail at start
# ("Unknown option 'send_default_pii'"), hence the second pin. SSAL_LABEL_STUDIO_VERSION overrides the version.
ssal_label_studio_spec() { echo "label-studio==${SSAL_LABEL_STUDIO_VERSION:-1.23.2} sentry-sdk<3"; }

ssal_ensure_label_studio() {
    local spec stamp=.lsvenv/.ssal-installed
    spec="$(ssal_label_studio_spec)"
    cd "$ssal_root" || return 1
    [ "$(cat "$stamp" 2>/dev/null)" = "$spec" ] && return 0
    echo "ssal: installing $spec into .lsvenv (for the Label Studio tests; about 2 min the first time)" >&2
    rm -rf .lsvenv
    "${SSAL_PYTHON:-python3}" -m venv .lsvenv \
        && .lsvenv/bin/python -m pip install --quiet --disable-pip-version-check $spec \
        && echo "$spec" > "$stamp" \
        || { echo "ssal: error: pip install $spec into .lsvenv failed (see above)" >&2; return 1; }
}
