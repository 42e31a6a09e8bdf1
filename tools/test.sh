#!/usr/bin/env bash
# Install wdstream with its test extras into ./.venv (created when missing) and run the suite.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
log=$(mktemp)
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -40
    echo "pip install failed" >&2
    exit 1
fi
# Azurite, the Azure Blob emulator of the azure-marked tests, from npm, pinned. It is installed
# once per machine into a cache folder outside the checkout (CI runs in a fresh clone each time)
# and linked as the git-ignored .azurite/, where the tests look for it. Without node and npm the
# azure tests skip, and the test summary says so (tests/conftest.py).
AZURITE_VERSION=3.37.0
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    azurite_version() {
        node -p "require('$1/node_modules/azurite/package.json').version" 2>/dev/null || true
    }
    if [ "$(azurite_version "$PWD/.azurite")" != "$AZURITE_VERSION" ]; then
        home="${XDG_CACHE_HOME:-$HOME/.cache}/wdstream/azurite-$AZURITE_VERSION"
        if [ "$(azurite_version "$home")" != "$AZURITE_VERSION" ]; then
            echo "installing azurite@$AZURITE_VERSION into $home (once per machine; about a minute)"
            mkdir -p "$home"
            if ! npm install --prefix "$home" --no-save --no-audit --no-fund --loglevel=error \
                "azurite@$AZURITE_VERSION" >"$log" 2>&1; then
                tail -20 "$log" >&2
                echo "npm install azurite@$AZURITE_VERSION failed" >&2
                exit 1
            fi
        fi
        rm -rf .azurite
        ln -s "$home" .azurite
    fi
fi
rm -f "$log"
.venv/bin/ruff check wdstream tools tests
.venv/bin/ruff format --check wdstream tools tests
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true
exec .venv/bin/python -m pytest "$@"
