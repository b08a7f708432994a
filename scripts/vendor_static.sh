#!/usr/bin/env bash
# Re-fetch the vendored front-end libraries from the npm registry (pinned versions) and copy
# only their built files and licences under static/vendor/. Run from anywhere; needs npm.
set -euo pipefail

HTMX_VERSION="2.0.11"
UPLOT_VERSION="1.6.32"
SWAGGER_VERSION="5.35.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

fetch() {  # fetch NAME VERSION -> unpacks into $WORK/NAME/package
  local name="$1" version="$2"
  mkdir -p "$WORK/$name"
  (cd "$WORK/$name" && npm pack --silent "$name@$version" >/dev/null && tar xzf ./*.tgz)
}

fetch htmx.org "$HTMX_VERSION"
fetch uplot "$UPLOT_VERSION"
fetch swagger-ui-dist "$SWAGGER_VERSION"

rm -rf "$VENDOR/htmx-"* "$VENDOR/uplot-"* "$VENDOR/swagger-ui-dist-"*
mkdir -p "$VENDOR/htmx-$HTMX_VERSION" "$VENDOR/uplot-$UPLOT_VERSION" \
  "$VENDOR/swagger-ui-dist-$SWAGGER_VERSION"
cp "$WORK/htmx.org/package/dist/htmx.min.js" "$WORK/htmx.org/package/LICENSE" \
   "$VENDOR/htmx-$HTMX_VERSION/"
cp "$WORK/uplot/package/dist/uPlot.iife.min.js" "$WORK/uplot/package/dist/uPlot.min.css" \
   "$WORK/uplot/package/LICENSE" "$VENDOR/uplot-$UPLOT_VERSION/"
# Swagger UI for /docs: the bundle (with its licence notes), the stylesheet and the favicon.
SWAGGER="$WORK/swagger-ui-dist/package"
cp "$SWAGGER/swagger-ui-bundle.js" "$SWAGGER/swagger-ui-bundle.js.LICENSE.txt" \
   "$SWAGGER/swagger-ui.css" "$SWAGGER/favicon-32x32.png" "$SWAGGER/LICENSE" "$SWAGGER/NOTICE" \
   "$VENDOR/swagger-ui-dist-$SWAGGER_VERSION/"

echo "vendored htmx $HTMX_VERSION, uPlot $UPLOT_VERSION and Swagger UI $SWAGGER_VERSION into $VENDOR"
