#!/usr/bin/env bash
# Set up phenoclip in ./.venv (idempotent).
#  - The venv sees system site-packages, so a torch you installed yourself (a CUDA build) is kept.
#  - Without any torch, the CPU build is installed (PHENOCLIP_TORCH overrides the requirement).
#  - mamba-ssm: with CUDA (nvcc + a CUDA torch) its kernels are built; otherwise it is installed
#    without them (MAMBA_SKIP_CUDA_BUILD) and phenoclip uses its pure-PyTorch scan.
#    --no-cache-dir: pip would otherwise cache the locally built wheel and hide a broken step.
#  - bcftools, tabix, plink2 (reference tools for tests and benchmarks), strace (fault injection
#    in tests) and slurm-wlm + munge (the SLURM recipe's test starts a one-node Slurm) come from
#    apt when root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PHENOCLIP_VENV:-.venv}
PIP_QUIET=${PIP_QUIET:--q}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import torch" 2>/dev/null; then
    echo "setup: no torch found; installing ${PHENOCLIP_TORCH:-torch==2.13.0} (CPU build where available)" >&2
    pip install $PIP_QUIET "${PHENOCLIP_TORCH:-torch==2.13.0}"
fi

if ! pip show -q mamba-ssm >/dev/null 2>&1; then
    pip install $PIP_QUIET packaging ninja wheel setuptools einops
    if command -v nvcc >/dev/null 2>&1 && python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        pip install $PIP_QUIET --no-build-isolation --no-cache-dir mamba-ssm
    else
        MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
            pip install $PIP_QUIET --no-build-isolation --no-cache-dir mamba-ssm
    fi
fi

pip install $PIP_QUIET -e ".[test,bench]"

missing=""
for tool in bcftools tabix plink2 strace slurmctld munged; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing$missing from apt" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            bcftools tabix plink2 strace slurm-wlm munge) >/dev/null
    else
        echo "setup: warning:$missing not found; tests and benchmarks that compare against them are skipped" >&2
    fi
fi
echo "setup: ok ($(python -c 'import torch; print("torch", torch.__version__)'))" >&2
