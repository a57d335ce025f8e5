#!/usr/bin/env bash
# The main job: set up .venv on first use, then reproduce the paper's Table 1, Table 2 and Figure 2 in
# miniature on the embedded real-MNIST data (preset `quick`: up to 112 models on mnist5k, Table 2 on lambda
# ladders; 16 min from a fresh clone, set-up included, alone on two CPU cores, 2026-12-02).
# The results store and report go to ./runs/quick; running it again resumes and trains only what is
# missing. Extra arguments are passed on (e.g. --out DIR, --device cuda, --quiet).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup-venv.sh"
exec "$root/.venv/bin/smoothness" reproduce quick "$@"
