#!/usr/bin/env bash
# One command: set up and start a local shisa on a fresh Debian/Ubuntu machine.
# Installs packages, starts the Podman API service (/run/podman/podman.sock),
# a throwaway OpenLDAP with the demo users on 127.0.0.1:3890, and shisa on
# 127.0.0.1:8470, then prints the `shisa chat` line to try.
# Run as root (rootful Podman). Re-running restarts the stack.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${SHISA_STACK_DIR:-/var/lib/shisa-stack}
LDAP_PORT=${SHISA_LDAP_PORT:-3890}
[ "$(id -u)" = 0 ] || { echo "run as root: shisa's embedded default drives rootful Podman" >&2; exit 1; }

bash "$ROOT/deploy/install-deps.sh"
command -v cargo >/dev/null || { echo "needs a Rust toolchain (cargo): https://rustup.rs" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/shisa"
mkdir -p "$STATE"

stop() { [ -f "$STATE/$1.pid" ] && kill "$(cat "$STATE/$1.pid")" 2>/dev/null || true; rm -f "$STATE/$1.pid"; }

# 1. Podman API service, unless one already answers.
cat > "$STATE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
if ! curl -sf --unix-socket /run/podman/podman.sock http://d/libpod/_ping >/dev/null 2>&1; then
  mkdir -p /run/podman
  CONTAINERS_CONF="$STATE/containers.conf" nohup podman system service --time=0 unix:///run/podman/podman.sock \
    >"$STATE/podman.log" 2>&1 &
  echo $! >"$STATE/podman.pid"
  for _ in $(seq 50); do curl -sf --unix-socket /run/podman/podman.sock http://d/libpod/_ping >/dev/null 2>&1 && break; sleep 0.2; done
fi

# A tiny admin image for the `busybox` template: FROM scratch with Debian's static busybox.
if ! podman image exists localhost/busybox:latest; then
  IMG=$(mktemp -d)
  cp /bin/busybox "$IMG/busybox"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$IMG/passwd"
  printf 'root:x:0:\n' >"$IMG/group"
  cat >"$IMG/Containerfile" <<'CF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "/tmp", "/etc", "/root"]
RUN ["/bin/chmod", "1777", "/tmp"]
COPY passwd /etc/passwd
COPY group /etc/group
CMD ["/bin/sh"]
CF
  CONTAINERS_CONF="$STATE/containers.conf" podman build -q -t localhost/busybox:latest "$IMG" >/dev/null
  rm -rf "$IMG"
fi

# 2. The configuration: the example, with the directory switched to the throwaway LDAP.
ln -sf "$ROOT/deploy/demo-users.toml" "$STATE/demo-users.toml"
sed -e "s#^data_dir = .*#data_dir = \"$STATE/data\"#" \
    -e "s#^source = \"static\"#source = \"ldap\"#" \
    -e "/^users_file = /d" \
    "$ROOT/deploy/shisa.example.toml" >"$STATE/shisa.toml"
cat >>"$STATE/shisa.toml" <<CONF

# Added by deploy/local-stack.sh: the throwaway directory with the demo users.
[directory.ldap]
url = "ldap://127.0.0.1:$LDAP_PORT"
bind_dn = "cn=admin,dc=example,dc=edu"
bind_password = { file = "ldap-password" }
base_dn = "dc=example,dc=edu"
CONF
head -c 18 /dev/urandom | base64 >"$STATE/ldap-password"
chmod 600 "$STATE/ldap-password"
"$BIN" check-config --config "$STATE/shisa.toml" 2>/dev/null

# 3. OpenLDAP, loaded from the same demo users file.
stop slapd
rm -rf "$STATE/ldap" && mkdir -p "$STATE/ldap/db"
cat >"$STATE/ldap/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $STATE/ldap/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "dc=example,dc=edu"
rootdn "cn=admin,dc=example,dc=edu"
rootpw $(cat "$STATE/ldap-password")
directory $STATE/ldap/db
access to attrs=userPassword by anonymous auth by self write by * none
access to * by * read
CONF
"$BIN" demo ldif --config "$STATE/shisa.toml" >"$STATE/ldap/demo.ldif"
slapadd -q -f "$STATE/ldap/slapd.conf" -l "$STATE/ldap/demo.ldif"
slapd -f "$STATE/ldap/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/"
for _ in $(seq 50); do [ -s "$STATE/ldap/slapd.pid" ] && break; sleep 0.1; done
cp "$STATE/ldap/slapd.pid" "$STATE/slapd.pid"

# 4. shisa.
stop shisa
nohup "$BIN" serve --config "$STATE/shisa.toml" >"$STATE/shisa.log" 2>&1 &
echo $! >"$STATE/shisa.pid"
for _ in $(seq 50); do curl -sf http://127.0.0.1:8470/healthz >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:8470/healthz >/dev/null || { echo "shisa did not start; see $STATE/shisa.log" >&2; exit 1; }

cat <<MSG

shisa is running on http://127.0.0.1:8470 (logs: $STATE/shisa.log).
Try it as the demo student alice:

  $BIN chat --config $STATE/shisa.toml --as alice "/container help"
  $BIN chat --config $STATE/shisa.toml --as alice "/container run --name web --port 80 --template busybox -- httpd -f -p 80 -h /tmp"

Other demo users: bob, carol, sensei (instructor), admin. Stop everything with:
  kill \$(cat $STATE/*.pid)
MSG
