#!/bin/sh
# Refuses to release an overlay that is not ready for a real cluster: a
# placeholder (example.com, example.org, …) left in the render — the public
# hostname (environment.yaml), the registry (images:) — or an image that is
# not pinned (no tag, `latest`, `dev`) or not from a registry host.
#   deploy/check-release.sh deploy/overlays/production
# The CI deploy jobs run it after setting the images, before applying.
set -eu
overlay=${1:?usage: deploy/check-release.sh <overlay directory>}
rendered=$(kubectl kustomize "$overlay")
status=0
placeholders=$(printf '%s\n' "$rendered" | grep -nE '(^|[^A-Za-z0-9-])example\.(com|org|net)([^A-Za-z0-9-]|$)' || true)
if [ -n "$placeholders" ]; then
  echo "$overlay: placeholders left (set them in the overlay):" >&2
  printf '%s\n' "$placeholders" >&2
  status=1
fi
for image in $(printf '%s\n' "$rendered" | sed -n 's/^[ -]*image: *//p' | tr -d '"' | sort -u); do
  name=${image%@sha256:*}
  case "$image" in
    *@sha256:*) tag=pinned ;;
    *) tag=$(printf '%s' "$image" | sed -n 's|.*/[^/:]*:\([^/:]*\)$|\1|p; s|^[^/:]*:\([^/:]*\)$|\1|p') ;;
  esac
  host=${name%%/*}
  if [ -z "$tag" ] || [ "$tag" = latest ] || [ "$tag" = dev ]; then
    echo "$overlay: image $image is not pinned to a release tag or digest" >&2
    status=1
  elif [ "$host" = "$name" ] || ! printf '%s' "$host" | grep -qE '[.:]|^localhost$'; then
    echo "$overlay: image $image names no registry host (Docker Hub by default)" >&2
    status=1
  fi
done
[ "$status" = 0 ] && echo "$overlay: ready to release (no placeholder; every image pinned, from a registry)"
exit "$status"
