# Shared helpers for the packaging scripts (sourced, not run).
# Tools are installed only when missing: Debian packages with apt-get (as
# root), cargo-deb with `cargo install` into target/tools (nothing cached
# outside the clone).

# The packaging scripts build into this clone's own target/ (the paths of
# the artifacts they print and use are under it), whatever CARGO_TARGET_DIR
# the caller has set for other builds.
export CARGO_TARGET_DIR="$PWD/target"

# need_apt CMD PKG: install Debian package PKG unless command CMD exists.
need_apt() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "packaging: '$1' is missing; install the Debian package '$2' (as root)" >&2
    exit 1
  fi
  if [ -z "${_apt_updated:-}" ]; then
    apt-get update -qq >&2
    _apt_updated=1
  fi
  echo "packaging: installing $2" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >&2
}

# The crate version from Cargo.toml, e.g. 0.1.0.
crate_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1
}
