# Sourced by the environment scripts (bootstrap.sh and the peers' *_venv.sh): one way to build an environment
# idempotently. A stamp in the environment holds the hash of the files that decide what it holds; it is rebuilt
# only when they changed.
#   source scripts/venv.sh
#   if venv_stale .venv-x pyproject.toml "$0"; then venv_pip torch==...; ...; venv_check "import x"; venv_done; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

venv_stale() {  # venv_stale DIR FILE...: create DIR if missing; true when it must be (re)installed
    VENV="$1"
    shift
    local py="${PYTHON:-python3.11}"
    command -v "$py" >/dev/null 2>&1 || py=python3
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    VENV_WANT="$(cat "$@" scripts/venv.sh | sha256sum | cut -d' ' -f1)"
    [ "$(cat "$VENV/.relprop-installed" 2>/dev/null || true)" != "$VENV_WANT" ]
}

venv_pip() {  # pip install -q into the environment, without pip's noise about install locations
    "$VENV/bin/python" -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true
}

venv_check() {  # fail unless the environment imports what it was built for
    "$VENV/bin/python" -W ignore -c "$1"
}

venv_done() {
    echo "$VENV_WANT" > "$VENV/.relprop-installed"
}
