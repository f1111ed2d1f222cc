#!/usr/bin/env bash
# ./run_local.sh          the local demo (README.md): venv, install, moto Kinesis, backfill, streaming replay
# ./run_local.sh test     the whole test suite, on the compiled core and on its pure-Python source
# ./run_local.sh bench    the benchmarks of BENCHMARKS.md (regenerates BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# installing compiles the per-update core (transforms/core_build.py): again when one of its sources changed
core=$(sed -n '/^COMPILED_MODULES/,/)$/p' transforms/core_build.py | grep -o 'transforms\.[a-z_]*' | sed 's#\.#/#; s#$#.py#')
stamp=.venv/.installed-$(cat setup.py pyproject.toml $core transforms/*.pxd | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[test,bench]"
  touch "$stamp"
fi
export PYTHONUNBUFFERED=1
case "${1:-demo}" in
  test)  shift   # on the compiled core, then on its pure-Python source: both must pass
         .venv/bin/python -m pytest -q "$@" tests
         echo "again on the pure-Python core (KINESIS_EXPORT_PURE_PYTHON=1):"
         KINESIS_EXPORT_PURE_PYTHON=1 exec .venv/bin/python -m pytest -q "$@" tests ;;
  bench) shift; exec .venv/bin/python -m bench "$@" ;;
  demo)  shift || true; exec .venv/bin/python -m pipelines.demo "$@" ;;
  -*)    exec .venv/bin/python -m pipelines.demo "$@" ;;   # demo options: --out DIR, --help, ...
  *) echo "usage: $0 [test|bench|demo] [options]   (demo options: $0 --help)" >&2; exit 2 ;;
esac
