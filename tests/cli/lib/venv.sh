# A Python venv cached in the build tree for the CLI tests that need PyPI packages (sourced after
# lib/common.sh; this folder is not a test). PyPI unreachable: the test is skipped (77) with the
# reason, except under CI (CI=true), where it fails.
# unavailable REASON: skip, or fail under CI.
unavailable() {
    if [ "${CI:-}" = true ]; then fail "$1 (CI reaches PyPI)"; finish; exit 1; fi
    echo "SKIP: $1"
    exit 77
}
# cached_venv DIR MODULE PIP_SPEC...: DIR/venv holds MODULE (importable), else it is made again
# and PIP_SPEC installed (the first run: ~5-30 s). Sets VENV_PY.
cached_venv() {
    local cache=$1 module=$2; shift 2
    local venv=$cache/venv
    mkdir -p "$cache"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import $module" 2>/dev/null; then
        rm -rf "$venv"
        python3 -m venv "$venv" >"$cache/venv.log" 2>&1 || unavailable "python3 -m venv failed (python3-venv missing?)"
        timeout 300 "$venv/bin/pip" install -q "$@" >>"$cache/venv.log" 2>&1 ||
            { rm -rf "$venv"; unavailable "pip install $* failed (PyPI unreachable?): $(tail -1 "$cache/venv.log")"; }
    fi
    VENV_PY=$venv/bin/python
}
