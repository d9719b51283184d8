#!/usr/bin/env bash
# Create .venv/ at the repository root when it is missing and install rexnet-deploy with the
# build + test extras into it. Idempotent: a second run only re-checks the install.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$py" -m venv .venv
fi
stamp=.venv/.rexnet-deploy-installed
want=$(cat pyproject.toml constraints/pinned.txt | sha256sum | cut -c1-16)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  # (this machine's pip config lists local index folders, some absent: drop pip's warnings about them)
  # onnxruntime (CPU) and onnxruntime-gpu (from the trt extra) write the same module: an older
  # .venv that holds the CPU package drops it first, so the GPU build owns the files.
  if .venv/bin/python -m pip show --quiet onnxruntime >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --yes --quiet onnxruntime
    reinstall=(--force-reinstall --no-deps onnxruntime-gpu)
  else
    reinstall=()
  fi
  .venv/bin/python -m pip install --quiet -c constraints/pinned.txt -e ".[dev]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  if (( ${#reinstall[@]} )); then
    .venv/bin/python -m pip install --quiet -c constraints/pinned.txt "${reinstall[@]}" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  fi
  echo "$want" > "$stamp"
fi
