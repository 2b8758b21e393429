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

# Modes in the context are the modes in the image: no umask surprises.
umask 022
ctx=target/image-context
root=$ctx/rootfs
rm -rf "$ctx"
install -d -m 0755 "$root/usr/bin" "$root/etc/ssl/certs"
install -d -m 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/bin/voipbin-tokend"
install -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nvoipbin-tokend:x:65532:65532:voipbin-tokend:/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nvoipbin-tokend:x:65532:\n' > "$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"

podman build --pull=never --no-cache \
  --label "org.opencontainers.image.title=voipbin-tokend" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.licenses=MIT OR Apache-2.0" \
  -f Containerfile -t "$tag" "$ctx" >&2
echo "$tag"
