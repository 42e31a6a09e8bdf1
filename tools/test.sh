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
.venv/bin/ruff check wdstream tools tests
.venv/bin/ruff format --check wdstream tools tests
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true
exec .venv/bin/python -m pytest "$@"
