# Sourced by the environment scripts (bootstrap.sh and the peers' *_venv.sh): one way to build an environment
# idempotently. A stamp in the environment holds the hash of the files that decide what it holds; it is rebuilt
# only when they changed.
#   source scripts/venv.sh
#   if venv_stale .venv-x pyproject.toml "$0"; then venv_torch torch==...; venv_pip ...; venv_check "import x"; venv_done; fi
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

venv_torch() {  # install torch (and torchvision) with uv, whose files are hard links into uv's cache: the four
    # environments on torch 2.14.1 (with its 3 GB of CUDA libraries) then hold it once on disk, and a fresh clone
    # on a machine that built them before adds almost nothing. The other packages still go through pip (venv_pip),
    # which finds torch installed. --compile-bytecode: uv leaves .pyc files out by default, and where a process may
    # not write them (PYTHONDONTWRITEBYTECODE, a read-only install) every start would compile torch, numpy and
    # sympy from source again: 7 of the 8 s of a first LRP call, which imports sympy through autograd.
    local uv=.cache/uv-env/bin/uv
    if [ ! -x "$uv" ]; then
        "${PYTHON:-python3}" -m venv .cache/uv-env
        .cache/uv-env/bin/python -m pip install -q "uv==0.13.9" 2>&1 | grep -v "^WARNING: Location" || true
    fi
    # the machine's pip configuration (local mirrors of the registry) holds for uv too
    local args=() url
    for url in $("$VENV/bin/python" -m pip config get global.extra-index-url 2>/dev/null || true); do
        args+=(--extra-index-url "$url")
    done
    for url in ${PIP_FIND_LINKS:-$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)}; do
        args+=(--find-links "$url")
    done
    [ ${#args[@]} -eq 0 ] || args+=(--index-strategy unsafe-best-match)
    "$uv" pip install -q --python "$VENV/bin/python" --link-mode hardlink --compile-bytecode "${args[@]}" "$@"
}

venv_check() {  # fail unless the environment imports what it was built for
    "$VENV/bin/python" -W ignore -c "$1"
}

venv_done() {
    echo "$VENV_WANT" > "$VENV/.relprop-installed"
}
