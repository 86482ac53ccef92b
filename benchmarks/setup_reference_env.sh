#!/usr/bin/env bash
# Build the throwaway reference environment used by benchmarks/parity.py and
# benchmarks/corruption_speed.py: medmnistc 0.1.0 (MedMNIST-C) and imagecorruptions-imaug 1.1.5
# (ImageNet-C fork that works with current numpy/scikit-image), isolated from medrobust's .venv.
#
# Usage: bash benchmarks/setup_reference_env.sh [ENV_DIR]     (default: <repo>/.refenv, git-ignored)
#
# Choices:
# * numpy<2.3: medmnistc's MotionBlur calls np.fromstring(blob, np.uint8), whose binary mode is
#   removed in numpy 2.3 (2.2 only warns). Pinning keeps the reference code unmodified.
#   (_reference_runner.py applies a np.frombuffer shim only if it finds numpy>=2.3 anyway.)
# * torch/torchvision: medmnistc uses them for gaussian_blur / gamma and the medmnist loader.
# * medmnistc imports Wand at import time, which needs ImageMagick's MagickWand library.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${1:-$REPO_ROOT/.refenv}"
PYTHON="${PYTHON:-python3}"

if ! ldconfig -p 2>/dev/null | grep -q libMagickWand; then
    if [ "$(id -u)" = "0" ]; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y libmagickwand-dev
    else
        echo "libMagickWand missing: run 'sudo apt-get install -y libmagickwand-dev' first" >&2
        exit 1
    fi
fi

"$PYTHON" -m venv "$ENV_DIR"
PIP=("$ENV_DIR/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
# torch/torchvision: the same releases as medrobust's own pins (pyproject.toml). The PyPI
# torchvision wheels are linked against PyPI's CUDA torch, so a CPU-only torch wheel paired with
# them fails at import ("operator torchvision::nms does not exist"). Override with TORCH_SPEC.
read -r -a TORCH_SPEC <<< "${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
"${PIP[@]}" "numpy<2.3" "medmnistc==0.1.0" "imagecorruptions-imaug==1.1.5" "${TORCH_SPEC[@]}"

"$ENV_DIR/bin/python" - <<'PY'
import importlib.metadata as md
import medmnistc.corruptions.registry  # noqa: F401  (fails here if Wand/ImageMagick is missing)
import imagecorruptions  # noqa: F401
for pkg in ("medmnistc", "imagecorruptions-imaug", "medmnist", "numpy", "scikit-image",
            "opencv-python", "torch", "torchvision", "Wand", "Pillow", "scipy"):
    print(f"{pkg}=={md.version(pkg)}")
PY
echo "reference environment ready: $ENV_DIR"
