#!/usr/bin/env bash
# .ci/oldest-python.sh - the archive tests under the oldest Python this machine has (Debian's
# /usr/bin/python3, 3.11.2: no tarfile.data_filter/FilterError, which arrived in 3.11.4/3.12).
# pyproject says requires-python >=3.11 (sqlite3 serialize), so archive/restore must not depend on tarfile APIs newer than 3.11.0.
# Dependencies come from Debian packages (offline-friendly, no venv); run as root from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${OLDEST_PYTHON:-/usr/bin/python3}
if ! "$PY" -c 'import pytest, psutil, yaml' 2>/dev/null; then
    apt-get update -q >/dev/null || true
    apt-get install -y -q python3-pytest python3-psutil python3-yaml >/dev/null
fi
echo "oldest python: $("$PY" --version 2>&1) at $PY (tarfile.data_filter: $("$PY" -c 'import tarfile; print(hasattr(tarfile, "data_filter"))'))"
PYTHONPATH="$PWD" "$PY" -m pytest -q -p no:cacheprovider tests/test_context_archive.py
