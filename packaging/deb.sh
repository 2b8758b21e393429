#!/usr/bin/env bash
# Builds the Debian package target/debian/voipbin-tokend_<version>-1_amd64.deb
# with cargo-deb (installed into target/tools when missing). Progress goes
# to stderr; the last line on stdout is the .deb's path.
#
# The package ships the ordinary (dynamically linked, glibc) release build,
# as Debian expects; packaging/static.sh makes the static one.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh

if ! command -v cargo-deb >/dev/null 2>&1; then
  if [ ! -x target/tools/bin/cargo-deb ]; then
    echo "packaging: cargo install cargo-deb (into target/tools)" >&2
    cargo install --locked --quiet --root target/tools cargo-deb >&2
  fi
  PATH="$PWD/target/tools/bin:$PATH"
fi
need_apt gzip gzip

cargo build --release --locked >&2
bin=target/release/voipbin-tokend

# Generated assets (see [package.metadata.deb] in Cargo.toml).
out=target/debian-build
rm -rf "$out"
mkdir -p "$out/units"
# The units in systemd/ name /usr/local/bin (the manual install route); the
# package installs the binary in /usr/bin.
for unit in voipbin-tokend.service voipbin-tokend@.service; do
  sed 's|/usr/local/bin/voipbin-tokend|/usr/bin/voipbin-tokend|g' "systemd/$unit" > "$out/units/$unit"
  if grep -q /usr/local "$out/units/$unit"; then
    echo "packaging: $unit still names /usr/local" >&2
    exit 1
  fi
done
cp systemd/voipbin-tokend.sysusers.conf "$out/units/voipbin-tokend.sysusers"
"$bin" man | gzip -9n > "$out/voipbin-tokend.1.gz"
"$bin" completions bash > "$out/voipbin-tokend.bash"
"$bin" completions zsh > "$out/_voipbin-tokend"
"$bin" completions fish > "$out/voipbin-tokend.fish"

rm -f target/debian/voipbin-tokend_*.deb
cargo deb --no-build --no-strip >&2
ls "$PWD"/target/debian/voipbin-tokend_*.deb
