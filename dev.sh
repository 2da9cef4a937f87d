#!/usr/bin/env bash
# DemoAI developer entry point.
#   ./dev.sh run [ARGS]   install what is missing, then open the DemoAI window
#   ./dev.sh test [ARGS]  install what is missing, then run every check and test
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
cmd=${1:-run}; shift || true
case "$cmd" in
  run)
    installers/setup.sh
    exec .venv/bin/demoai "$@" ;;
  test)
    DEMOAI_EXTRA_DEBS="xvfb ${DEMOAI_EXTRA_DEBS:-}" installers/setup.sh
    export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
    .venv/bin/ruff check app tests bench
    .venv/bin/ruff format --check app tests bench
    .venv/bin/lint-imports
    .venv/bin/mypy app
    exec .venv/bin/python -m pytest "$@" ;;
  *)
    echo "usage: ./dev.sh run|test [ARGS]" >&2; exit 2 ;;
esac
