#!/usr/bin/env bash
# Checks infra/ with what runs without Azure or Docker: checkov over the Bicep and Terraform
# templates and the Dockerfile (every failed check is fixed or skipped inline with its reason), and the parity
# tests (infra/tests) that parse both and compare resources and the worker scale rule.
# The Python tools go into .tools/venv on first use.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.tools/venv"
if [[ ! -x "$venv/bin/checkov" ]] || ! "$venv/bin/python" -c "import hcl2" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==3.*" "python-hcl2>=7"
fi

"$venv/bin/python" -m unittest discover -s infra/tests -v
"$venv/bin/checkov" --quiet --compact --skip-download --framework bicep -d infra/bicep
"$venv/bin/checkov" --quiet --compact --skip-download --framework terraform -d infra/terraform
"$venv/bin/checkov" --quiet --compact --skip-download --framework dockerfile -f Dockerfile
