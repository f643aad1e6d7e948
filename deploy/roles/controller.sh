#!/usr/bin/env bash
# Install (or upgrade) the Kumo controller on this Debian 12 host, as root. Idempotent: run it
# again after changing options or pulling a new checkout; it redoes only what changed and never
# regenerates a secret. See docs/deploy.md.
ROLE=controller
# shellcheck source=deploy/roles/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LISTEN=""
FACING_URL=""
AGENT_AUTH=""
AGENT_LISTEN=""
DATABASE=postgresql     # postgresql (local, Debian's) | sqlite | url
DATABASE_URL=""
TOKEN_FILE=""

role_usage() {
  cat <<'EOF'
Usage: deploy/roles/controller.sh [options]
Installs the controller: Debian packages (PostgreSQL included), /opt/kumo/venv,
/etc/kumo/controller.env, the kumo-controller service, and a local PostgreSQL database and role.

  --listen HOST:PORT         the API listener (default for a new file: 0.0.0.0:8787)
  --agent-auth mtls|token    how agents and the controller authenticate each other (default
                             for a new file: mtls; hosts then join with `kumo hosts join-token`)
  --agent-listen HOST:PORT   the TLS listener for agents (mtls; default for a new file:
                             0.0.0.0:8790; the storage node has 8789)
  --agent-facing-url URL     how agents reach the controller (default for a new file:
                             https://<first address of this host>:<agent port> with mtls,
                             http://<first address>:<port> with token)
  --database-url URL         an existing database (e.g. PostgreSQL elsewhere); no local server
  --sqlite                   SQLite in the state directory; no PostgreSQL (one controller only)
  --agent-token-file FILE    use this shared agent token instead of generating one
  --public-pool CIDR         KUMO_PUBLIC_POOL, the public network of the hosts' uplink
  --storage-url URL          KUMO_STORAGE_URL, the storage node's API
EOF
  common_usage
}

role_option() {
  case "$1" in
    --listen) LISTEN="$2" ;;
    --agent-facing-url) FACING_URL="$2" ;;
    --agent-auth)
      case "$2" in mtls|token) AGENT_AUTH="$2"; ROLE_SETS+=("KUMO_AGENT_AUTH=$2") ;;
                   *) die "--agent-auth is mtls or token, not $2" ;; esac ;;
    --agent-listen) AGENT_LISTEN="$2"; ROLE_SETS+=("KUMO_AGENT_LISTEN=$2") ;;
    --database-url) DATABASE=url; DATABASE_URL="$2" ;;
    --agent-token-file) TOKEN_FILE="$2" ;;
    --public-pool) ROLE_SETS+=("KUMO_PUBLIC_POOL=$2") ;;
    --storage-url) ROLE_SETS+=("KUMO_STORAGE_URL=$2") ;;
    *) return 1 ;;
  esac
}

# --sqlite takes no value: handle it before the common parser.
args=()
for a in "$@"; do
  if [ "$a" = --sqlite ]; then DATABASE=sqlite; else args+=("$a"); fi
done
role_parse_args "${args[@]+"${args[@]}"}"

# ---- settings this run writes -------------------------------------------------------------------
if [ -n "$LISTEN" ]; then ROLE_SETS+=("KUMO_LISTEN=$LISTEN"); else ROLE_DEFAULTS+=("KUMO_LISTEN=0.0.0.0:8787"); fi
port="${LISTEN:-0.0.0.0:8787}"; port="${port##*:}"
# mtls (the default): agents on other machines reach a TLS listener of their own.
auth="${AGENT_AUTH:-$(env_value controller KUMO_AGENT_AUTH)}"
auth="${auth:-mtls}"
agent_listen="${AGENT_LISTEN:-$(env_value controller KUMO_AGENT_LISTEN)}"
if [ "$auth" = mtls ] && [ -z "$agent_listen" ]; then
  agent_listen=0.0.0.0:8790
  ROLE_DEFAULTS+=("KUMO_AGENT_LISTEN=$agent_listen")
fi
if [ -n "$FACING_URL" ]; then
  ROLE_SETS+=("KUMO_AGENT_FACING_URL=$FACING_URL")
elif [ -z "$(env_value controller KUMO_AGENT_FACING_URL)" ]; then
  addr="$(first_address)"
  if [ "$auth" = mtls ]; then
    [ -z "$addr" ] || ROLE_DEFAULTS+=("KUMO_AGENT_FACING_URL=https://$addr:${agent_listen##*:}")
  else
    [ -z "$addr" ] || ROLE_DEFAULTS+=("KUMO_AGENT_FACING_URL=http://$addr:$port")
  fi
fi
if [ -z "$(env_value controller KUMO_API_URL)" ]; then
  addr="$(first_address)"
  [ -z "$addr" ] || ROLE_DEFAULTS+=("KUMO_API_URL=http://$addr:$port")
fi
case "$DATABASE" in
  sqlite) ROLE_SETS+=("KUMO_DATABASE_URL=") ;;
  url) ROLE_SETS+=("KUMO_DATABASE_URL=$DATABASE_URL") ;;
esac
if [ -n "$TOKEN_FILE" ]; then
  ROLE_SETS+=("KUMO_AGENT_TOKEN=$(read_secret_file "$TOKEN_FILE")")
fi

# ---- PostgreSQL (Debian's): a cluster, the role `kumo` and the database `kumo` ---------------
ensure_postgresql() {
  local url password version
  url="$(env_value controller KUMO_DATABASE_URL)"
  case "$url" in
    *host=/var/run/postgresql*|*host=/run/postgresql*) ;;
    *) say "database: ${url:-SQLite in the state directory} (no local PostgreSQL set-up)"; return 0 ;;
  esac
  password="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).password or "")' "$url")"
  [[ "$password" =~ ^[A-Za-z0-9_-]*$ ]] || die "unexpected characters in the database password"
  if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
    say "creating the PostgreSQL $version cluster 'main'"
    pg_createcluster "$version" main >/dev/null
  fi
  if have_systemd; then
    systemctl enable --quiet postgresql
    systemctl start postgresql
  else
    # no systemd as PID 1 (a chroot, a container): Debian's own cluster control starts it now;
    # postgresql.service stays enabled for the next boot
    systemctl enable --quiet postgresql 2>/dev/null || true
    local v c
    while read -r v c _; do
      pg_ctlcluster "$v" "$c" status >/dev/null 2>&1 || pg_ctlcluster "$v" "$c" start
    done < <(pg_lsclusters -h)
  fi
  local psql=(runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtAX)
  for _ in $(seq 30); do "${psql[@]}" -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 1; done
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'kumo'")" != 1 ]; then
    say "creating the PostgreSQL role kumo"
    "${psql[@]}" -c "CREATE ROLE kumo LOGIN"
  fi
  # the password from controller.env (generated once): for connections that ask for one
  [ -z "$password" ] || "${psql[@]}" -c "ALTER ROLE kumo WITH LOGIN PASSWORD '$password'" >/dev/null
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'kumo'")" != 1 ]; then
    say "creating the PostgreSQL database kumo"
    runuser -u postgres -- createdb -O kumo kumo
  fi
}

# ---- the run -----------------------------------------------------------------------------------
if on_machine; then
  check_debian
  pkgs=(qemu-utils)
  [ "$DATABASE" != postgresql ] || pkgs+=(postgresql)
  ensure_packages "${pkgs[@]}"
  ensure_user
  ensure_venv postgres
fi
write_env controller
if on_machine; then
  ensure_postgresql
fi
install_unit kumo-controller.service
if [ -n "$ROOT" ] && [ "$PRINT_CONFIG" = 0 ]; then
  mkdir -p "$(target /var/lib/kumo/controller)"
fi
start_unit kumo-controller.service
if [ "$PRINT_CONFIG" = 0 ]; then
  say "controller installed. Join agents with the token in $(target /etc/kumo/controller.env)" \
      "(KUMO_AGENT_TOKEN); the admin's API key is /var/lib/kumo/controller/admin.key after the first start."
fi
