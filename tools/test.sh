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
rm -f "$log"
# Azurite, the Azure Blob emulator of the azure-marked tests, from npm, pinned, into the
# git-ignored .azurite/ (kept between runs: installed only when that version is not there yet).
# Without node the azure tests skip and the test summary says so (tests/clouds.py).
AZURITE_VERSION=3.37.0
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    have=$(node -p "require('./.azurite/node_modules/azurite/package.json').version" 2>/dev/null || true)
    if [ "$have" != "$AZURITE_VERSION" ]; then
        echo "installing azurite@$AZURITE_VERSION into .azurite/ (once; about a minute)"
        mkdir -p .azurite
        if ! npm install --prefix .azurite --no-save --no-audit --no-fund --loglevel=error \
            "azurite@$AZURITE_VERSION" >/dev/null 2>"$log.npm"; then
            tail -20 "$log.npm" >&2
            echo "npm install azurite@$AZURITE_VERSION failed" >&2
            rm -f "$log.npm"
            exit 1
        fi
        rm -f "$log.npm"
    fi
fi
.venv/bin/ruff check wdstream tools tests
.venv/bin/ruff format --check wdstream tools tests
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true
exec .venv/bin/python -m pytest "$@"
