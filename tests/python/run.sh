#!/usr/bin/env bash
# Runs the official-Python-SDK suite against a freshly started spritesd.
# Usage: tests/python/run.sh [pytest args...]
# Env: SPRITESD_BIN, SPRITES_TEST_IMAGE_DIR, SPRITES_TEST_KEEP=1, PYTHON (default python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    if ! "$py" -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "python3 -m venv failed; installing python3-venv" >&2
            apt-get update -qq
            ver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            "$py" -m venv "$venv"
        else
            echo "cannot create a venv with $py (install python3-venv)" >&2
            exit 2
        fi
    fi
fi

"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"

cd "$here"
set +e
"$venv/bin/python" -m pytest -q "$@"
rc=$?
set -e
exit "$rc"
