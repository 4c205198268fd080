#!/usr/bin/env bash
# Fill the ${...} placeholders of the manifests and write them, one file each, to OUT_DIR.
#
#   PROJECT_ID=p BUCKET=b DAEMON_IMAGE=...@sha256:... WORKER_IMAGE=...@sha256:... \
#     WEBHOOK_KEY_DIGEST=<16 hex> infra/k8s/render.sh cluster|app OUT_DIR
#
# WEBHOOK_KEY_DIGEST: a prefix of the webhook signing key's SHA-256, written into the
# daemon's Pod template so that a rotated key restarts the daemon (cloudbuild.yaml).
#
# Only these five names are replaced, and any ${...} left over fails the render: a
# manifest must never reach the cluster half filled. sed, not envsubst, so the deploy step
# needs nothing beyond a POSIX image.
set -euo pipefail

usage() { echo "usage: $0 cluster|app OUT_DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
part=$1 out=$2
[[ $part == cluster || $part == app ]] || usage
here=$(cd "$(dirname "$0")" && pwd)

: "${PROJECT_ID:?PROJECT_ID is required}"
if [[ $part == app ]]; then
  : "${BUCKET:?BUCKET is required}" "${DAEMON_IMAGE:?DAEMON_IMAGE is required}" "${WORKER_IMAGE:?WORKER_IMAGE is required}" \
    "${WEBHOOK_KEY_DIGEST:?WEBHOOK_KEY_DIGEST is required}"
fi

mkdir -p "$out"
for src in "$here/$part"/*.yaml; do
  dst="$out/$(basename "$src")"
  sed -e "s|\${PROJECT_ID}|${PROJECT_ID}|g" \
      -e "s|\${BUCKET}|${BUCKET:-}|g" \
      -e "s|\${DAEMON_IMAGE}|${DAEMON_IMAGE:-}|g" \
      -e "s|\${WORKER_IMAGE}|${WORKER_IMAGE:-}|g" \
      -e "s|\${WEBHOOK_KEY_DIGEST}|${WEBHOOK_KEY_DIGEST:-}|g" \
      "$src" > "$dst"
  if grep -n '^[^#]*\${' "$dst" >&2; then
    echo "render: unfilled placeholder in $dst" >&2
    exit 1
  fi
done
echo "rendered $part manifests into $out" >&2
