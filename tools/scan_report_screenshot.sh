#!/usr/bin/env bash
# docs/scan-report.png: run `bta-core demo` and photograph its report.html in headless Chromium
# at 1400 px (the size the README shows), as 256-colour PNG. Needs `chromium` (apt-get install -y
# chromium). Usage: bash tools/scan_report_screenshot.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m bta_core.cli demo --out "$tmp/demo" --quiet
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --window-size=1400,2000 \
  --screenshot="$tmp/shot.png" "file://$tmp/demo/report.html" 2>/dev/null
"$PY" - "$tmp/shot.png" docs/scan-report.png <<'PY'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
    sys.argv[2], optimize=True
)
print("wrote", sys.argv[2], im.size)
PY
