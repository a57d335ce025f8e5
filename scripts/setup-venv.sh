#!/usr/bin/env bash
# Create .venv/ at the repository root on first use and install smoothness into it; reuse it after.
# PyTorch: an existing install in .venv is kept. Otherwise, on a machine with an NVIDIA GPU the
# default (CUDA) build from PyPI is installed; without one, a CPU-only build: first the local
# CPU wheel where pip's find-links offer it, else PyTorch's CPU index.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing PyTorch with CUDA" >&2
        "${pip[@]}" install "torch>=2.13,<3"
    else
        echo "setup: no GPU, installing a CPU-only PyTorch" >&2
        "${pip[@]}" install "torch==2.13.0+cpu" 2>/dev/null \
            || "${pip[@]}" install "torch>=2.13,<3" --index-url https://download.pytorch.org/whl/cpu \
                   --extra-index-url https://pypi.org/simple
    fi
fi
stamp="$venv/.smoothness-installed"
want="$(cat "$root/pyproject.toml" | "$venv/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$venv/bin/python" -c "import smoothness" 2>/dev/null; then
    echo "setup: installing smoothness and its dependencies into $venv" >&2
    "${pip[@]}" install -e "$root[dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -c "import smoothness" || { echo "setup: installation failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
