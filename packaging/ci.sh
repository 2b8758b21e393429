#!/usr/bin/env bash
# The packaging test, run by .ci/run as root: each artifact used the way a
# user would use it. Installs what it needs (Debian packages, cargo-deb into
# target/tools, kubernetes-validate into a venv under target/), changes
# nothing global that it does not undo, prints each step's duration.
#
#   deb     packaging/deb.sh; lintian; dpkg -i; dpkg -L; systemd-analyze
#           verify; `check` and `once` as the service user on the README's
#           layout; upgrade over itself keeping an edited config; dpkg -P
#           leaves nothing but the user.
#   static  packaging/static.sh; ldd/readelf say static; `demo` for a few
#           seconds; `once` against the stand-in via `localhost`.
#   image   packaging/image.sh (offline, FROM scratch); size; `podman run`
#           the daemon against the stand-in on the host network with a
#           read-only config, password and root, an output volume; token
#           lands; non-root; `podman stop` exits 0. Private podman config
#           and storage under target/.
#   k8s     every manifest through kubernetes-validate --strict for each
#           supported Kubernetes version; each ConfigMap's config through
#           `voipbin-tokend check`.
#
# Usage: packaging/ci.sh [deb] [static] [image] [k8s]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh

# Kubernetes versions the manifests support (native sidecars: 1.29+).
K8S_VERSIONS="1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"

work=$PWD/target/packaging-ci
rm -rf "$work"
mkdir -p "$work"
standin_pid=
cleanups=()
cleanup() {
  local i
  # Last in, first out: undo in the reverse order of doing.
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
  if [ -n "$standin_pid" ]; then kill "$standin_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# step NAME FUNCTION: runs FUNCTION, prints how long it took.
step() {
  local name=$1 start=$SECONDS
  echo "== packaging: $name"
  "$2"
  echo "-- packaging: $name took $((SECONDS - start)) s"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 10; i++)); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  fail "timed out after ${limit}s waiting for $what"
}

# start_standin BIN: the hidden `standin` command of BIN on a free loopback
# port; sets STANDIN_URL (http://127.0.0.1:PORT) and STANDIN_PORT. Account:
# demo@example.com / demo-password.
start_standin() {
  rm -f "$work/standin.out"
  "$1" standin --listen 127.0.0.1:0 --lifetime 1h > "$work/standin.out" 2> "$work/standin.err" &
  standin_pid=$!
  wait_for 10 "the stand-in's address" grep -q '^http://127.0.0.1:[0-9][0-9]*$' "$work/standin.out"
  STANDIN_URL=$(head -n1 "$work/standin.out")
  STANDIN_PORT=${STANDIN_URL##*:}
}

stop_standin() {
  kill "$standin_pid"
  wait "$standin_pid" || fail "the stand-in did not exit 0 on SIGTERM"
  standin_pid=
}

# A free loopback TCP port (for a health listener).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------
# deb

# Everything under these roots, to show that purge leaves nothing behind.
snapshot() {
  find /etc /usr /var/lib /opt -xdev 2>/dev/null | grep -v -E '^/var/lib/(apt|dpkg/(info|updates|triggers|lock|status|available|diversions))|^/var/lib/containers|^/etc/(passwd|group|shadow|gshadow)-$' | sort
}

deb_build() {
  DEB=$(packaging/deb.sh | tail -n1)
  [ -f "$DEB" ] || fail "packaging/deb.sh did not print a .deb: $DEB"
  echo "built $DEB ($(stat -c %s "$DEB") bytes)"
}

deb_lintian() {
  need_apt lintian lintian
  # lintian leaves a temp file (mldbm-elf-*) behind: keep it in the clone.
  mkdir -p "$work/tmp"
  TMPDIR=$work/tmp lintian --fail-on error,warning "$DEB"
  echo "lintian: no error, no warning"
}

deb_install_and_use() {
  need_apt systemd-analyze systemd
  if dpkg -s voipbin-tokend >/dev/null 2>&1; then
    fail "voipbin-tokend is already installed here; this test installs and purges it"
  fi
  # A manual install's config or state (or a state dir left by a test run
  # as root): purge would delete it, and the before/after comparison needs
  # them absent. Moved aside here, put back at the end.
  local d saved
  for d in /etc/voipbin-tokend /var/lib/voipbin-tokend; do
    [ -e "$d" ] || continue
    saved=$work/saved$(echo "$d" | tr / _)
    mv "$d" "$saved"
    cleanups+=("rm -rf '$d'; mv '$saved' '$d'")
    echo "moved $d aside; it is put back at the end"
  done
  user_existed=no
  if getent passwd voipbin-tokend >/dev/null; then user_existed=yes; fi
  snapshot > "$work/before.txt"

  dpkg -i "$DEB"
  cleanups+=("dpkg -P voipbin-tokend >/dev/null 2>&1")

  # What the package put where.
  dpkg -L voipbin-tokend > "$work/files.txt"
  for f in /usr/bin/voipbin-tokend \
    /usr/lib/systemd/system/voipbin-tokend.service \
    /usr/lib/systemd/system/voipbin-tokend@.service \
    /usr/lib/sysusers.d/voipbin-tokend.conf \
    /usr/share/man/man1/voipbin-tokend.1.gz \
    /usr/share/bash-completion/completions/voipbin-tokend \
    /usr/share/zsh/vendor-completions/_voipbin-tokend \
    /usr/share/fish/vendor_completions.d/voipbin-tokend.fish \
    /usr/share/doc/voipbin-tokend/README.md \
    /usr/share/doc/voipbin-tokend/ARCHITECTURE.md \
    /usr/share/doc/voipbin-tokend/docs/configuration.md \
    /usr/share/doc/voipbin-tokend/docs/access-keys.md \
    /usr/share/doc/voipbin-tokend/docs/deployment.md \
    /usr/share/doc/voipbin-tokend/docs/exec.md \
    /usr/share/doc/voipbin-tokend/docs/operations.md \
    /usr/share/doc/voipbin-tokend/docs/performance.md \
    /usr/share/doc/voipbin-tokend/examples/config.toml \
    /usr/share/doc/voipbin-tokend/changelog.Debian.gz \
    /usr/share/doc/voipbin-tokend/copyright; do
    grep -qx "$f" "$work/files.txt" || fail "dpkg -L lacks $f"
    [ -f "$f" ] || fail "$f is listed but not installed"
  done
  if grep -q '^/etc' "$work/files.txt"; then fail "the package owns files in /etc: $(grep '^/etc' "$work/files.txt")"; fi
  gzip -t /usr/share/man/man1/voipbin-tokend.1.gz
  echo "dpkg -L: $(wc -l < "$work/files.txt") paths, all present"

  # The user (systemd-sysusers), the config directory, no service enabled.
  getent passwd voipbin-tokend >/dev/null || fail "postinst did not create the user"
  [ "$(stat -c '%U:%G %a' /etc/voipbin-tokend)" = "root:voipbin-tokend 750" ] ||
    fail "/etc/voipbin-tokend is $(stat -c '%U:%G %a' /etc/voipbin-tokend)"
  if ls /etc/systemd/system/*.wants/voipbin-tokend* >/dev/null 2>&1; then
    fail "the install enabled the service"
  fi
  [ -z "$(ls -A /etc/voipbin-tokend)" ] || fail "the package put files in /etc/voipbin-tokend"

  # The installed units, as installed (ExecStart= must exist).
  grep -q '^ExecStart=/usr/bin/voipbin-tokend run' /usr/lib/systemd/system/voipbin-tokend.service ||
    fail "the packaged unit does not start /usr/bin/voipbin-tokend"
  local out
  out=$(systemd-analyze verify --man=no voipbin-tokend.service voipbin-tokend@ci.service 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify said: $out"
  echo "systemd-analyze verify: both units clean"

  # The README's package route, verbatim.
  install -m 0640 -g voipbin-tokend /usr/share/doc/voipbin-tokend/examples/config.toml /etc/voipbin-tokend/config.toml
  install -m 0600 /dev/null /etc/voipbin-tokend/main.password
  runuser -u voipbin-tokend -- voipbin-tokend check -c /etc/voipbin-tokend/config.toml > "$work/check.txt" ||
    fail "check as the service user: exit $? ($(cat "$work/check.txt"))"
  echo "check as voipbin-tokend: exit 0"
  # The defect this layout fixes: a root:root config is unreadable (78).
  chgrp root /etc/voipbin-tokend/config.toml
  local code=0
  runuser -u voipbin-tokend -- voipbin-tokend check -c /etc/voipbin-tokend/config.toml >/dev/null 2>&1 || code=$?
  [ "$code" = 78 ] || fail "check of an unreadable config exited $code, not 78"
  chgrp voipbin-tokend /etc/voipbin-tokend/config.toml

  # The installed binary as the service user, with the template unit's
  # layout (NAME.toml, password as a systemd credential), against the
  # stand-in: a token lands.
  start_standin /usr/bin/voipbin-tokend
  local creds=$work/creds out_dir=$work/run-voipbin
  mkdir -p "$creds" "$out_dir"
  printf 'demo-password\n' > "$creds/password"
  chown -R voipbin-tokend: "$creds" "$out_dir"
  chmod 0700 "$creds" "$out_dir"
  cat > /etc/voipbin-tokend/ci.toml <<EOF
[api]
base-url = "$STANDIN_URL"
[state]
dir = "$out_dir/state"
[[credential]]
name = "main"
username = "demo@example.com"
password-credential = "password"
[[credential.output]]
path = "$out_dir/main.token"
format = "raw"
EOF
  chmod 0640 /etc/voipbin-tokend/ci.toml
  chgrp voipbin-tokend /etc/voipbin-tokend/ci.toml
  runuser -u voipbin-tokend -- env CREDENTIALS_DIRECTORY="$creds" voipbin-tokend once -c /etc/voipbin-tokend/ci.toml ||
    fail "once as the service user"
  voipbin-tokend inspect "$out_dir/main.token"
  stop_standin

  # Upgrade over itself: the admin's edited config stays as it is.
  echo '# edited by the admin' >> /etc/voipbin-tokend/config.toml
  local before after
  before=$(stat -c '%U:%G %a' /etc/voipbin-tokend /etc/voipbin-tokend/config.toml; sha256sum /etc/voipbin-tokend/config.toml)
  dpkg -i "$DEB"
  after=$(stat -c '%U:%G %a' /etc/voipbin-tokend /etc/voipbin-tokend/config.toml; sha256sum /etc/voipbin-tokend/config.toml)
  [ "$before" = "$after" ] || fail "the upgrade changed the config: $before -> $after"
  runuser -u voipbin-tokend -- voipbin-tokend check -c /etc/voipbin-tokend/config.toml >/dev/null
  echo "upgrade over itself: config kept"

  # Purge: nothing left but the user.
  mkdir -p /var/lib/voipbin-tokend   # as systemd's StateDirectory= would
  dpkg -P voipbin-tokend
  snapshot > "$work/after.txt"
  if ! diff "$work/before.txt" "$work/after.txt"; then fail "dpkg -P left the paths above"; fi
  getent passwd voipbin-tokend >/dev/null || fail "purge removed the user"
  echo "dpkg -P: nothing left but the user"
  if [ "$user_existed" = no ]; then
    userdel voipbin-tokend 2>/dev/null || true
    groupdel voipbin-tokend 2>/dev/null || true
  fi
}

# ---------------------------------------------------------------------------
# static

static_build() {
  STATIC=$(packaging/static.sh | tail -n1)
  [ -x "$STATIC" ] || fail "packaging/static.sh did not print a binary: $STATIC"
  echo "built $STATIC ($(stat -c %s "$STATIC") bytes)"
}

static_check() {
  local l
  l=$(ldd "$STATIC" 2>&1 || true)
  case $l in
    *"statically linked"* | *"not a dynamic executable"*) echo "ldd: $l" ;;
    *) fail "ldd does not call $STATIC static: $l" ;;
  esac
  if readelf -lW "$STATIC" | grep -q INTERP; then fail "$STATIC asks for a dynamic loader"; fi

  # demo for a few seconds: tokens live 2 s, so renewals show.
  local code=0
  timeout --preserve-status -s INT 6 "$STATIC" demo --lifetime 2s --dir "$work/demo" \
    > "$work/demo.out" 2> "$work/demo.err" || code=$?
  [ "$code" = 0 ] || fail "demo exited $code after SIGINT: $(cat "$work/demo.err")"
  local renewals
  renewals=$(grep -c 'token renewed' "$work/demo.err" || true)
  [ "$renewals" -ge 2 ] || fail "demo renewed $renewals times in 6 s: $(cat "$work/demo.err")"
  "$STATIC" inspect "$work/demo/main.env" >/dev/null
  echo "demo: $renewals tokens in 6 s, exit 0 on SIGINT"

  # once against the stand-in, by name: `localhost` goes through the
  # resolver (musl: /etc/hosts, then DNS; no NSS).
  start_standin "$STATIC"
  mkdir -p "$work/once"
  printf 'demo-password\n' > "$work/once/password"
  chmod 0600 "$work/once/password"
  cat > "$work/once/config.toml" <<EOF
[api]
base-url = "http://localhost:$STANDIN_PORT"
[state]
dir = "state"
[[credential]]
name = "main"
username = "demo@example.com"
password-file = "password"
[[credential.output]]
path = "main.json"
format = "json"
EOF
  "$STATIC" once -c "$work/once/config.toml" || fail "once with the static binary"
  "$STATIC" inspect "$work/once/main.json"
  stop_standin
}

# ---------------------------------------------------------------------------
# image

# podman as these machines need it (runc, cgroupfs, lower ulimits) and its
# own storage, all under target/: nothing global is read or changed.
image_setup() {
  need_apt podman podman
  need_apt runc runc
  local p=$work/podman
  mkdir -p "$p/root" "$p/runroot"
  cat > "$p/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$p/tmp"
image_copy_tmp_dir = "$p/tmp"
EOF
  cat > "$p/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$p/root"
runroot = "$p/runroot"
EOF
  export CONTAINERS_CONF=$p/containers.conf CONTAINERS_STORAGE_CONF=$p/storage.conf
  # What podman and runc still write outside the storage (the blob-info
  # cache, runc's state root): removed afterwards unless it was there.
  local d
  for d in /var/lib/containers /run/runc; do
    [ -e "$d" ] || cleanups+=("rm -rf '$d'")
  done
  cleanups+=("podman rm -f -t 0 voipbin-tokend-ci >/dev/null 2>&1; podman rmi -a -f >/dev/null 2>&1; rm -rf '$p'")
}

image_build() {
  IMAGE=$(packaging/image.sh | tail -n1)
  case $IMAGE in localhost/voipbin-tokend:*) ;; *) fail "packaging/image.sh printed $IMAGE" ;; esac
  local size user
  size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
  echo "image $IMAGE: $size bytes, USER $user"
  [ "$size" -lt 15000000 ] || fail "the image is $size bytes (limit 15 MB)"
  case $user in [1-9]*:[1-9]*) ;; *) fail "USER is not a numeric non-root uid:gid: $user" ;; esac
}

image_run() {
  start_standin "$STATIC"
  local d=$work/container health
  health=$(free_port)
  mkdir -p "$d/config" "$d/secret" "$d/tokens" "$d/state"
  cat > "$d/config/config.toml" <<EOF
[api]
base-url = "http://localhost:$STANDIN_PORT"
[health]
listen = "127.0.0.1:$health"
[[credential]]
name = "main"
username = "demo@example.com"
password-file = "/run/secrets/voipbin/password"
[[credential.output]]
path = "/tokens/main.env"
format = "env"
mode = "0640"
EOF
  printf 'demo-password\n' > "$d/secret/password"
  chmod 0400 "$d/secret/password"
  chown 65532:65532 "$d/secret/password" "$d/tokens" "$d/state"
  chmod 0644 "$d/config/config.toml"

  podman run -d --name voipbin-tokend-ci --network host --read-only \
    --cap-drop all --security-opt no-new-privileges \
    -v "$d/config:/etc/voipbin-tokend:ro" \
    -v "$d/secret:/run/secrets/voipbin:ro" \
    -v "$d/tokens:/tokens" \
    -v "$d/state:/var/lib/voipbin-tokend" \
    "$IMAGE" >/dev/null
  wait_for 30 "a token in the output volume" test -s "$d/tokens/main.env"
  "$STATIC" inspect "$d/tokens/main.env"
  wait_for 10 "/readyz" python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$health/readyz', timeout=1)"
  echo "token in the volume; /readyz 200"

  local pid uid rss
  pid=$(podman inspect --format '{{.State.Pid}}' voipbin-tokend-ci)
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
  rss=$(awk '/^VmRSS:/ {print $2 " " $3}' "/proc/$pid/status")
  [ "$uid" != 0 ] || fail "the daemon runs as root in the container"
  # mountinfo: field 5 is the mount point, field 6 its options.
  awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | tail -n1 | grep -qE '^ro(,|$)' ||
    fail "the root filesystem is not read-only: $(awk '$5 == "/"' "/proc/$pid/mountinfo")"
  [ "$(stat -c %u "$d/tokens/main.env")" = "$uid" ] || fail "the token file is not owned by uid $uid"
  echo "runs as uid $uid, read-only root, resident $rss"

  podman stop -t 10 voipbin-tokend-ci >/dev/null
  local code
  code=$(podman inspect --format '{{.State.ExitCode}}' voipbin-tokend-ci)
  [ "$code" = 0 ] || fail "podman stop: the daemon exited $code: $(podman logs voipbin-tokend-ci 2>&1 | tail -n 20)"
  podman rm voipbin-tokend-ci >/dev/null
  echo "podman stop: exit 0"
  stop_standin

  # `demo` in the image: its temporary folder on the /tmp tmpfs that
  # --read-only provides (Kubernetes: an emptyDir at /tmp).
  podman run -d --name voipbin-tokend-ci --network none --read-only --cap-drop all "$IMAGE" demo --lifetime 2s >/dev/null
  wait_for 20 "two renewals in the image's demo" sh -c '[ "$(podman logs voipbin-tokend-ci 2>&1 | grep -c "token renewed")" -ge 2 ]'
  podman stop -t 10 voipbin-tokend-ci >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' voipbin-tokend-ci)
  [ "$code" = 0 ] || fail "demo in the image exited $code: $(podman logs voipbin-tokend-ci 2>&1 | tail -n 20)"
  podman rm voipbin-tokend-ci >/dev/null
  echo "demo in the image: renewals, exit 0 on podman stop"
}

# ---------------------------------------------------------------------------
# k8s

k8s_validate() {
  local venv=$PWD/target/venv-kv
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    need_apt python3 python3
    python3 -m venv "$venv" || { need_apt false python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q "$KUBERNETES_VALIDATE"
  fi
  local v
  for v in $K8S_VERSIONS; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/kubernetes/*.yaml ||
      fail "kubernetes-validate --strict -k $v"
    echo "kubernetes $v: all manifests valid (strict)"
  done

  # Each ConfigMap's config.toml against the binary.
  local bin=${STATIC:-}
  if [ -z "$bin" ]; then
    cargo build --quiet
    bin=target/debug/voipbin-tokend
  fi
  "$venv/bin/python" - "$work/k8s" deploy/kubernetes/*.yaml <<'EOF'
import os, sys, yaml
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "ConfigMap":
            for key, text in doc.get("data", {}).items():
                if key.endswith(".toml"):
                    name = f"{os.path.basename(path)[:-5]}--{doc['metadata']['name']}--{key}"
                    open(os.path.join(out, name), "w").write(text)
EOF
  # access-key.yaml needs a build with access keys; until this one has
  # them (a minimal access-key config passes check), its config is skipped.
  local keys=yes
  printf '[[credential]]\nname = "k"\nkind = "access-key"\nusername = "a@example.com"\npassword-env = "HOME"\n[[credential.output]]\npath = "/tmp/k"\nformat = "raw"\n' > "$work/probe.toml"
  "$bin" check -c "$work/probe.toml" >/dev/null 2>&1 || keys=no
  local f n=0
  for f in "$work"/k8s/*.toml; do
    if [ "$keys" = no ] && grep -q '^kind = "access-key"' "$f"; then
      echo "SKIP check: $(basename "$f") (this build has no access keys)"
      continue
    fi
    "$bin" check -c "$f" >/dev/null || fail "voipbin-tokend check $(basename "$f")"
    echo "check ok: $(basename "$f")"
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || fail "no ConfigMap config found in deploy/kubernetes"
}

# ---------------------------------------------------------------------------

run_deb() {
  step "deb: build (packaging/deb.sh)" deb_build
  step "deb: lintian" deb_lintian
  step "deb: install, use, upgrade, purge" deb_install_and_use
}
run_static() {
  step "static: build (packaging/static.sh)" static_build
  step "static: ldd, demo, once" static_check
}
run_image() {
  [ -n "${STATIC:-}" ] || step "static: build (packaging/static.sh)" static_build
  step "image: podman setup" image_setup
  step "image: build (packaging/image.sh)" image_build
  step "image: podman run against the stand-in" image_run
}
run_k8s() {
  step "k8s: kubernetes-validate and check" k8s_validate
}

total_start=$SECONDS
[ $# -gt 0 ] || set -- deb static image k8s
for part in "$@"; do
  case $part in
    deb | static | image | k8s) "run_$part" ;;
    *) fail "unknown part $part (deb, static, image, k8s)" ;;
  esac
done
echo "== packaging: all passed in $((SECONDS - total_start)) s"
