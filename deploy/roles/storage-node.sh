#!/usr/bin/env bash
# Install (or upgrade) the Kumo storage node (volumes and snapshots, served to hosts over NBD by
# qemu-storage-daemon, or kept on Ceph RBD) on this Debian 12 host, as root. Idempotent.
# See docs/deploy.md ("The storage node").
ROLE=storage-node
# shellcheck source=deploy/roles/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LISTEN=""

role_usage() {
  cat <<'EOF'
Usage: deploy/roles/storage-node.sh --nbd-host IP --token-file FILE [options]
Installs the storage node: qemu-storage-daemon (qemu-system-common), qemu-utils, the Ceph
client tools and QEMU's rbd driver, /opt/kumo/venv, /etc/kumo/storage-node.env and the
kumo-storage-node service. Then set the controller's KUMO_STORAGE_URL to
http://<this host>:8789 (deploy/roles/controller.sh --storage-url URL).

  --token-file FILE   a file holding the shared agent token (the controller's KUMO_AGENT_TOKEN)
  --nbd-host IP       the address hosts dial for NBD (an address of this machine); the default
                      for a new file is this host's first address
  --node-id ID        the node's name (default sn1)
  --listen HOST:PORT  the storage API listener (default for a new file: 0.0.0.0:8789)
  --backend nbd|rbd   (rbd: also --set KUMO_STORAGE_RBD_MON_HOSTS=...; docs/ceph-rbd.md)
  --tls-dir DIR       this node's certificate from the cloud CA (python -m
                      controller.storage_node_cert): NBD over TLS per host and the API over
                      mutual TLS (docs/security.md "Storage access"); no token needed then
EOF
  common_usage
}

role_option() {
  case "$1" in
    --token-file) ROLE_SETS+=("KUMO_STORAGE_TOKEN=$(read_secret_file "$2")") ;;
    --nbd-host) ROLE_SETS+=("KUMO_STORAGE_NBD_HOST=$2") ;;
    --node-id) ROLE_SETS+=("KUMO_STORAGE_NODE_ID=$2") ;;
    --listen) LISTEN="$2" ;;
    --backend) ROLE_SETS+=("KUMO_STORAGE_BACKEND=$2") ;;
    --tls-dir) ROLE_SETS+=("KUMO_STORAGE_NBD_TLS_DIR=$2" "KUMO_STORAGE_API_TLS_DIR=$2") ;;
    *) return 1 ;;
  esac
}
role_parse_args "$@"

if [ -n "$LISTEN" ]; then ROLE_SETS+=("KUMO_STORAGE_LISTEN=$LISTEN"); else ROLE_DEFAULTS+=("KUMO_STORAGE_LISTEN=0.0.0.0:8789"); fi
if [ -z "$(env_value storage-node KUMO_STORAGE_NBD_HOST)" ]; then
  addr="$(first_address)"
  [ -z "$addr" ] || ROLE_DEFAULTS+=("KUMO_STORAGE_NBD_HOST=$addr")
fi

if on_machine; then
  check_debian
  ensure_packages qemu-system-common qemu-utils qemu-block-extra ceph-common
  ensure_user
  ensure_venv ""
fi
write_env storage-node
install_unit kumo-storage-node.service
if [ -n "$ROOT" ] && [ "$PRINT_CONFIG" = 0 ]; then
  mkdir -p "$(target /var/lib/kumo/storage)"
fi
if [ "$PRINT_CONFIG" = 0 ] && [ -z "$(env_value storage-node KUMO_STORAGE_TOKEN)" ] \
    && [ -z "$(env_value storage-node KUMO_STORAGE_API_TLS_DIR)" ]; then
  say "warning: no KUMO_STORAGE_TOKEN: every request is refused (--token-file)"
fi
start_unit kumo-storage-node.service
