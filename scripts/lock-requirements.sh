#!/usr/bin/env bash
# Regenerate requirements.lock: the bridge's runtime dependencies
# (pyproject.toml [project].dependencies and what they pull in), each pinned to
# one version with the sha256 of every file PyPI has for it. The Dockerfile
# installs them with `pip install --require-hashes`, so an image gets exactly
# these files or fails to build.
#
#   scripts/lock-requirements.sh                          # follow pyproject.toml, keep other pins
#   scripts/lock-requirements.sh --upgrade                # newest versions of everything
#   scripts/lock-requirements.sh --upgrade-package NAME   # newest NAME only
#
# Arguments are passed to pip-compile. Run it with the Python the image runs
# (3.11): the resolution follows the running interpreter's environment
# markers. The hashes cover every wheel of a pinned version (x86_64, aarch64,
# ...), so the one lock serves both architectures. tests/deploy/test_lock.py
# fails when pyproject.toml and the lock disagree.
#
# Environment: VENV (default .venv) is where pip-tools is installed (from PyPI,
# if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
LOCK="requirements.lock"

log() { printf 'lock-requirements: %s\n' "$*" >&2; }

[ -x "$VENV/bin/pip" ] || { log "no virtualenv at $VENV: run 'make setup' first"; exit 1; }
version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$version" = "3.11" ] || { log "$VENV runs Python $version; the image runs 3.11"; exit 1; }
if [ ! -x "$VENV/bin/pip-compile" ]; then
    log "pip install pip-tools into $VENV"
    "$VENV/bin/pip" install --quiet 'pip-tools>=7.4'
fi

cd "$ROOT"
# PyPI only, whatever this machine's pip configuration adds (extra indexes,
# local wheel directories, constraints): the lock must resolve the same
# anywhere, and name no index or local path.
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null \
    CUSTOM_COMPILE_COMMAND="scripts/lock-requirements.sh" \
    "$VENV/bin/pip-compile" \
    --quiet \
    --generate-hashes \
    --strip-extras \
    --no-emit-index-url \
    --no-emit-find-links \
    --output-file "$LOCK" \
    "$@" \
    pyproject.toml
# pip-compile's own header names the command; this says the rest.
{
    echo "# The runtime dependencies of xpander-bridge, pinned, with the sha256 of every"
    echo "# file of each version: the Dockerfile installs them with"
    echo "# \`pip install --require-hashes\`. Generated from pyproject.toml: edit that,"
    echo "# then run scripts/lock-requirements.sh (--upgrade for newer versions;"
    echo "# docs/OPERATIONS.md, \"The image\"). Do not edit by hand."
    cat "$LOCK"
} >"$LOCK.new"
mv -f "$LOCK.new" "$LOCK"
log "wrote $LOCK"
