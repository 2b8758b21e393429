#!/usr/bin/env bash
# Builds the static binary (packaging/static.sh) and the container image
# from Containerfile with podman, offline: FROM scratch, nothing is pulled.
# Progress goes to stderr; the last line on stdout is the image's tag,
# localhost/voipbin-tokend:<version>.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh

need_apt podman podman
ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$ca" ]; then
  need_apt update-ca-certificates ca-certificates
fi

bin=$(packaging/static.sh | tail -n1)
version=$(crate_version)
tag="localhost/voipbin-tokend:$version"

ctx=target/image-context
rm -rf "$ctx"
mkdir -p "$ctx/tmp"
chmod 1777 "$ctx/tmp"
cp "$bin" "$ctx/voipbin-tokend"
cp "$ca" "$ctx/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nvoipbin-tokend:x:65532:65532:voipbin-tokend:/nonexistent:/sbin/nologin\n' > "$ctx/passwd"
printf 'root:x:0:\nvoipbin-tokend:x:65532:\n' > "$ctx/group"

podman build --pull=never --no-cache \
  --label "org.opencontainers.image.title=voipbin-tokend" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.licenses=MIT OR Apache-2.0" \
  -f Containerfile -t "$tag" "$ctx" >&2
echo "$tag"
