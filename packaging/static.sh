#!/usr/bin/env bash
# Builds the static x86_64 Linux binary (musl libc, no dynamic loader, no
# glibc version requirement). Installs the musl target and musl-gcc when
# missing. Progress goes to stderr; the last line on stdout is the binary's
# path. Why musl and not glibc +crt-static: see "Static binary" in docs/deployment.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh

target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  echo "packaging: rustup target add $target" >&2
  rustup target add "$target" >&2
fi
# ring compiles C and assembly: it needs a C compiler for musl.
need_apt musl-gcc musl-tools
export CC_x86_64_unknown_linux_musl=musl-gcc

cargo build --release --locked --target "$target" >&2
echo "$PWD/target/$target/release/voipbin-tokend"
