#!/usr/bin/env bash
# A real browser's view of a report: headless Chromium renders REPORT.html to a PNG.
#   bash tools/screenshot_report.sh out/report.html out/report.png [WIDTH HEIGHT]
# Needs chromium (Debian/Ubuntu: apt-get install chromium); exits 3 with a note when it is absent.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,4p' "$0"; exit 2; fi
HTML="$(realpath "$1")"
PNG="$(realpath -m "$2")"
WIDTH="${3:-1280}"
HEIGHT="${4:-1400}"
BROWSER="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$BROWSER" ]; then
  echo "note: no chromium found; install it (apt-get install chromium) to take the screenshot" >&2
  exit 3
fi
"$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$WIDTH,$HEIGHT" \
  --screenshot="$PNG" "file://$HTML" 2>/dev/null
test -s "$PNG" && echo "wrote $PNG"
