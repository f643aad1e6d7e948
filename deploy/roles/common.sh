# shellcheck shell=bash
# Shared code of the role commands deploy/roles/{controller,agent,storage-node}.sh (sourced, not
# run). Each role installs one Kumo process on a real Debian 12 host, as root, idempotently:
#
#   Debian packages -> the `kumo` system user -> /opt/kumo/venv (pip install of this checkout)
#   -> /etc/kumo/ROLE.env (every setting documented; secrets generated once, mode 0600)
#   -> role-specific set-up (PostgreSQL, libvirtd) -> /etc/systemd/system/kumo-ROLE.service
#   -> enabled, and started (restarted when something it runs changed)
#
# Modes (every role):
#   --root DIR      lay the files only (env file, unit, wants link, state dirs) under DIR; no
#                   packages, users, venv, databases, libvirt or systemctl. For tests and images.
#   --no-start      do everything on this machine but start (or restart) the service.
#   --print-config  write nothing: print the env file this run would write (secrets masked) and
#                   the unit it would install.
#   --set KEY=VALUE set any setting of the role's env file (repeatable; wins over the file).
#   --skip-packages do not apt-get install (the packages are known to be there).
#   -h, --help
set -euo pipefail

KUMO_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KUMO_DEPLOY="$KUMO_SRC/deploy"
KUMO_PREFIX=/opt/kumo
KUMO_VENV_DIR="$KUMO_PREFIX/venv"
KUMO_USER=kumo

# Packages every role needs: Python, and what pip needs to build libvirt-python (a dependency
# of the kumo package whatever the role).
KUMO_ROLE_BASE_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev ca-certificates
  iproute2 procps util-linux
)

# Parsed options (set by role_parse_args).
ROOT=""            # --root DIR ("" = this machine)
NO_START=0
PRINT_CONFIG=0
SKIP_PACKAGES=0
ROLE_SETS=()       # --set KEY=VALUE, passed on to deploy/envfile.py
ROLE_DEFAULTS=()   # the role's defaults for a fresh file (envfile.py --default)
ROLE_CHANGED=0     # 1 when a file the service reads changed in this run

say() { printf '\033[1m[kumo %s]\033[0m %s\n' "${ROLE:-deploy}" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# role_parse_args "$@": the common options; role options are handled by role_option, a function
# each role defines: `role_option NAME VALUE` returns 0 when it took a value, 1 when NAME is not
# its option. Options that take a value are given as `--name VALUE` or `--name=VALUE`.
role_parse_args() {
  while [ $# -gt 0 ]; do
    local opt="$1" val="" has_val=0
    case "$opt" in
      --*=*) val="${opt#*=}"; opt="${opt%%=*}"; has_val=1 ;;
    esac
    case "$opt" in
      -h|--help) role_usage; exit 0 ;;
      --no-start) NO_START=1 ;;
      --print-config) PRINT_CONFIG=1 ;;
      --skip-packages) SKIP_PACKAGES=1 ;;
      --root|--set|--*)
        if [ "$has_val" = 0 ]; then
          [ $# -ge 2 ] || die "$opt needs a value"
          val="$2"; shift
        fi
        case "$opt" in
          --root) ROOT="$(realpath -m "$val")" ;;
          --set) [[ "$val" == KUMO_*=* ]] || die "--set wants KUMO_NAME=VALUE, not $val"
                 ROLE_SETS+=("$val") ;;
          *) role_option "$opt" "$val" || die "unknown option $opt (see --help)" ;;
        esac ;;
      *) die "unexpected argument $opt (see --help)" ;;
    esac
    shift
  done
  if [ -z "$ROOT" ] && [ "$PRINT_CONFIG" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or with --root DIR / --print-config)"
  fi
}

common_usage() {
  cat <<'EOF'
Common options:
  --root DIR        lay the files only, under DIR (nothing on this machine is touched)
  --no-start        install and enable, but do not start or restart the service
  --print-config    write nothing; print the env file (secrets masked) and the unit
  --set KEY=VALUE   set a setting in the env file (repeatable)
  --skip-packages   do not install Debian packages
EOF
}

# Is this run changing the real machine (not --root, not --print-config)?
on_machine() { [ -z "$ROOT" ] && [ "$PRINT_CONFIG" = 0 ]; }

# A path of the target system: under --root DIR when given.
target() { printf '%s%s' "$ROOT" "$1"; }

have_systemd() { [ -d /run/systemd/system ]; }

check_debian() {
  local id="" version=""
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    id="$(. /etc/os-release && echo "${ID:-}")"
    # shellcheck disable=SC1091
    version="$(. /etc/os-release && echo "${VERSION_ID:-}")"
  fi
  if [ "$id" != debian ] || [ "$version" != 12 ]; then
    say "warning: made for Debian 12; this is ${id:-unknown} ${version:-?}"
  fi
}

ensure_packages() {
  [ "$SKIP_PACKAGES" = 0 ] || return 0
  local missing=() p
  for p in "${KUMO_ROLE_BASE_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  say "installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
}

ensure_user() {
  if ! getent passwd "$KUMO_USER" >/dev/null; then
    say "creating the system user $KUMO_USER"
    adduser --system --group --home /var/lib/kumo --no-create-home \
      --gecos "Kumo services" "$KUMO_USER" >/dev/null
  fi
}

# The venv: pip install of this checkout (not editable: the checkout may go away), redone only
# when the checkout's sources changed since the last install (stamp: a hash of them).
# ensure_venv EXTRAS: EXTRAS is the pip extras of the role ("" for none).
ensure_venv() {
  local extras="$1"
  local stamp="$KUMO_VENV_DIR/.kumo-source" want
  want="$( (cd "$KUMO_SRC" && find pyproject.toml controller agent images lab -type f \
             \( -name '*.py' -o -name '*.toml' -o -name '*.ini' -o -name '*.mako' -o -name '*.sh' \
                -o -name '*.cfg' -o -name '*.yaml' -o -path '*/files/*' \) -print0 \
           | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)$extras"
  if [ ! -x "$KUMO_VENV_DIR/bin/python" ]; then
    say "creating $KUMO_VENV_DIR"
    mkdir -p "$KUMO_PREFIX"
    python3 -m venv "$KUMO_VENV_DIR"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Kumo from $KUMO_SRC into $KUMO_VENV_DIR"
    # pip builds in a copy: never writes build/ or *.egg-info into the checkout
    local build
    build="$(mktemp -d)"
    tar -C "$KUMO_SRC" --exclude=.venv --exclude=.git --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=build -cf - . | tar -C "$build" -xf -
    "$KUMO_VENV_DIR/bin/pip" install -q --upgrade pip
    "$KUMO_VENV_DIR/bin/pip" install -q --upgrade "$build${extras:+[$extras]}"
    rm -rf "$build"
    echo "$want" > "$stamp"
    ROLE_CHANGED=1
  fi
}

# write_env NAME: render deploy/etc/NAME.env into /etc/kumo/NAME.env (or print it).
write_env() {
  local name="$1" args=() kv
  for kv in "${ROLE_DEFAULTS[@]}"; do args+=(--default "$kv"); done
  for kv in "${ROLE_SETS[@]}"; do args+=(--set "$kv"); done
  local out
  out="$(target "/etc/kumo/$name.env")"
  if [ "$PRINT_CONFIG" = 1 ]; then
    printf '==> %s <==\n' "$out"
    python3 "$KUMO_DEPLOY/envfile.py" "$KUMO_DEPLOY/etc/$name.env" "$out" --print "${args[@]}"
    return 0
  fi
  mkdir -p "$(dirname "$out")"
  chmod 0755 "$(dirname "$out")"
  local result
  result="$(python3 "$KUMO_DEPLOY/envfile.py" "$KUMO_DEPLOY/etc/$name.env" "$out" "${args[@]}")"
  say "$result"
  case "$result" in *written) ROLE_CHANGED=1 ;; esac
  chown root:root "$out" 2>/dev/null || true
}

# env_value NAME KEY: the value KEY has in the written /etc/kumo/NAME.env ("" when unset).
env_value() {
  local file
  file="$(target "/etc/kumo/$1.env")"
  [ -r "$file" ] || return 0
  sed -n "s/^$2=//p" "$file" | tail -n 1
}

# install_file SRC DEST MODE: copy when different; marks the run as changed.
install_file() {
  local src="$1" dest="$2" mode="$3"
  if ! cmp -s "$src" "$dest"; then
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest"
    ROLE_CHANGED=1
    say "$dest: written"
  fi
}

# install_unit UNIT: /etc/systemd/system/UNIT, enabled (multi-user.target.wants).
install_unit() {
  local unit="$1"
  local dest
  dest="$(target "/etc/systemd/system/$unit")"
  if [ "$PRINT_CONFIG" = 1 ]; then
    printf '==> %s <==\n' "$dest"
    cat "$KUMO_DEPLOY/systemd/$unit"
    return 0
  fi
  install_file "$KUMO_DEPLOY/systemd/$unit" "$dest" 0644
  if [ -z "$ROOT" ] && have_systemd; then
    systemctl daemon-reload
    systemctl enable --quiet "$unit"
  elif [ -z "$ROOT" ] && command -v systemctl >/dev/null && systemctl enable --quiet "$unit" 2>/dev/null; then
    # no running systemd (a chroot, a container, an image being built): systemctl enables
    # offline, from the unit files alone; the unit starts at the next boot
    :
  else
    # what `systemctl enable` does, without systemctl (or under --root)
    local wants
    wants="$(target /etc/systemd/system/multi-user.target.wants)"
    mkdir -p "$wants"
    ln -sfn "/etc/systemd/system/$unit" "$wants/$unit"
  fi
}

# systemd_note UNIT: on a machine where systemd is not PID 1, say what was (not) done.
systemd_note() {
  say "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)):" \
      "$1 is installed and enabled, not started; it starts at the next boot under systemd," \
      "or start it as its unit says (ExecStart=, User=, EnvironmentFile=)"
}

# start_unit UNIT: start it, or restart it when this run changed what it runs.
start_unit() {
  local unit="$1"
  on_machine || return 0
  if [ "$NO_START" = 1 ]; then
    say "not starting $unit (--no-start): systemctl start $unit"
    return 0
  fi
  if ! have_systemd; then
    systemd_note "$unit"
    return 0
  fi
  if systemctl is-active --quiet "$unit" && [ "$ROLE_CHANGED" = 1 ]; then
    say "restarting $unit"
    systemctl restart "$unit"
  else
    systemctl start "$unit"
  fi
  say "$unit: $(systemctl is-active "$unit" || true); logs: journalctl -u $unit"
}

# read_secret_file FILE: its first line (for --token-file), refusing an empty one.
read_secret_file() {
  local v
  [ -r "$1" ] || die "cannot read $1"
  v="$(head -n 1 "$1" | tr -d '[:space:]')"
  [ -n "$v" ] || die "$1 is empty"
  printf '%s' "$v"
}

# first_address: this machine's first global IPv4 address (for URLs other hosts dial).
first_address() {
  ip -4 -o addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}'
}
