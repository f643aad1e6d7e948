#!/usr/bin/env bash
# Install (or upgrade) a Kumo host agent on this Debian 12 host, as root, and join it to a
# controller. Idempotent: run it again after changing options or pulling a new checkout.
# See docs/deploy.md ("Joining a host", "Networking on a real host").
ROLE=agent
# shellcheck source=deploy/roles/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LISTEN=""
ADVERTISE_URL=""
UNDERLAY_DEV=""
UNDERLAY_IP=""
HOST_ID=""

role_usage() {
  cat <<'EOF'
Usage: deploy/roles/agent.sh --controller-url URL (--join-token-file FILE | --token-file FILE) [options]
Installs a host agent: QEMU/KVM, libvirtd (its `default` NAT network destroyed and disabled),
nftables, dnsmasq, /opt/kumo/venv, /etc/kumo/agent.env and the kumo-agent service, and joins
the host to the controller at URL: with a one-time join token (`kumo hosts join-token HOST`;
mutual TLS with this host's own certificate), or with the shared agent token (plain HTTP).

  --controller-url URL   the controller's agent-facing URL: https://10.0.0.10:8789 (its
                         KUMO_AGENT_LISTEN) with a join token, http://10.0.0.10:8787 with a
                         shared token
  --join-token-file FILE a file holding a one-time join token: the agent exchanges it for this
                         host's certificate at its first start (KUMO_AGENT_AUTH=mtls)
  --join-url URL         the controller's API, where the join goes (e.g. http://10.0.0.10:8787)
  --ca-sha256 HEX        the cloud CA's sha256 (printed by `kumo hosts join-token`): the join
                         refuses any other CA
  --token-file FILE      a file holding the shared agent token (KUMO_AGENT_AUTH=token)
  --host-id ID           this host's id (default for a new file: the short hostname)
  --underlay-dev DEV     the device of the VXLAN underlay and of the public addresses' ARP
                         (default: the device of the default route)
  --underlay-ip IP       this host's underlay address (default: DEV's first IPv4 address);
                         given alone, DEV is the device that holds it
  --listen HOST:PORT     the agent API listener (default for a new file: 0.0.0.0:8788)
  --advertise-url URL    how the controller reaches this agent (default for a new file:
                         http://<underlay IP, else first address>:<port>)
  --hypervisor auto|kvm|qemu   KVM when the CPU has vmx/svm and /dev/kvm opens (auto)
EOF
  common_usage
}

role_option() {
  case "$1" in
    --controller-url) ROLE_SETS+=("KUMO_AGENT_CONTROLLER_URL=$2") ;;
    --token-file) ROLE_SETS+=("KUMO_AGENT_AUTH=token" "KUMO_AGENT_TOKEN=$(read_secret_file "$2")") ;;
    --join-token-file)
      ROLE_SETS+=("KUMO_AGENT_AUTH=mtls" "KUMO_AGENT_JOIN_TOKEN=$(read_secret_file "$2")") ;;
    --join-url) ROLE_SETS+=("KUMO_AGENT_JOIN_URL=$2") ;;
    --ca-sha256) ROLE_SETS+=("KUMO_AGENT_CA_SHA256=$2") ;;
    --host-id) HOST_ID="$2" ;;
    --underlay-dev) UNDERLAY_DEV="$2"; ROLE_SETS+=("KUMO_AGENT_UNDERLAY_DEV=$2") ;;
    --underlay-ip) UNDERLAY_IP="$2"; ROLE_SETS+=("KUMO_AGENT_UNDERLAY_IP=$2") ;;
    --listen) LISTEN="$2" ;;
    --advertise-url) ADVERTISE_URL="$2" ;;
    --hypervisor) ROLE_SETS+=("KUMO_AGENT_HYPERVISOR=$2") ;;
    *) return 1 ;;
  esac
}
role_parse_args "$@"

# ---- settings this run writes -------------------------------------------------------------------
# How this host will authenticate once this run is done: an option of this run, else what the
# file says, else the template's default (mtls).
effective_auth() {
  local kv v=""
  for kv in "${ROLE_SETS[@]+"${ROLE_SETS[@]}"}"; do
    case "$kv" in KUMO_AGENT_AUTH=*) v="${kv#*=}" ;; esac
  done
  [ -n "$v" ] || v="$(env_value agent KUMO_AGENT_AUTH)"
  printf '%s\n' "${v:-mtls}"
}
# The machine's own namespace is the host here.
ROLE_DEFAULTS+=("KUMO_AGENT_ALLOW_ROOT_NETNS=true")
if [ -n "$HOST_ID" ]; then
  ROLE_SETS+=("KUMO_AGENT_HOST_ID=$HOST_ID")
else
  # pinned at first install: a later hostname change must not make it another host
  hid="$(hostname -s 2>/dev/null | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9-\n' '-')"
  [ -z "$hid" ] || ROLE_DEFAULTS+=("KUMO_AGENT_HOST_ID=$hid")
fi
if [ -n "$LISTEN" ]; then ROLE_SETS+=("KUMO_AGENT_LISTEN=$LISTEN"); else ROLE_DEFAULTS+=("KUMO_AGENT_LISTEN=0.0.0.0:8788"); fi
port="${LISTEN:-0.0.0.0:8788}"; port="${port##*:}"
if [ -n "$ADVERTISE_URL" ]; then
  ROLE_SETS+=("KUMO_AGENT_ADVERTISE_URL=$ADVERTISE_URL")
elif [ -z "$(env_value agent KUMO_AGENT_ADVERTISE_URL)" ]; then
  addr="$UNDERLAY_IP"
  if [ -z "$addr" ] && [ -n "$UNDERLAY_DEV" ]; then
    addr="$(ip -4 -o addr show dev "$UNDERLAY_DEV" scope global 2>/dev/null |
            awk '{split($4, a, "/"); print a[1]; exit}')"
  fi
  [ -n "$addr" ] || addr="$(first_address)"
  scheme=http
  [ "$(effective_auth)" = token ] || scheme=https  # mtls: the agent serves TLS on LISTEN
  [ -z "$addr" ] || ROLE_DEFAULTS+=("KUMO_AGENT_ADVERTISE_URL=$scheme://$addr:$port")
fi

# --underlay-ip alone: the device holding that address is the underlay device.
if [ -n "$UNDERLAY_IP" ] && [ -z "$UNDERLAY_DEV" ] && [ -z "$(env_value agent KUMO_AGENT_UNDERLAY_DEV)" ]; then
  dev="$(ip -4 -o addr show 2>/dev/null | awk -v ip="$UNDERLAY_IP" '{split($4, a, "/"); if (a[1] == ip) {print $2; exit}}')"
  [ -z "$dev" ] || ROLE_DEFAULTS+=("KUMO_AGENT_UNDERLAY_DEV=$dev")
fi

# ---- libvirt and the kernel -------------------------------------------------------------------
# Debian's libvirt enables a `default` NAT network (virbr0, 192.168.122.0/24, its own nftables
# rules) on the machine: Kumo never uses it. Destroy it and keep it from coming back.
disable_libvirt_default_network() {
  rm -f "$(target /etc/libvirt/qemu/networks/autostart/default.xml)"
  on_machine || return 0
  if have_systemd; then
    systemctl enable --quiet libvirtd.service
    [ "$NO_START" = 1 ] || systemctl start libvirtd.service
  else
    # offline enable (Debian's package enables it too); nothing can start it here
    systemctl enable --quiet libvirtd.service 2>/dev/null || true
    [ -S /run/libvirt/libvirt-sock ] || systemd_note "libvirtd.service (and virtlogd.service)"
  fi
  if [ -S /run/libvirt/libvirt-sock ]; then
    virsh -c qemu:///system net-autostart default --disable >/dev/null 2>&1 || true
    virsh -c qemu:///system net-destroy default >/dev/null 2>&1 || true
  fi
}

# Kernel modules the dataplane needs: vxlan, and br_netfilter (machine-wide; the agent never
# loads it) so bridged guest traffic passes the security groups' `inet kumo` table.
ensure_modules() {
  local conf tmp
  conf="$(target /etc/modules-load.d/kumo-agent.conf)"
  tmp="$(mktemp)"
  printf '# Kumo agent (deploy/roles/agent.sh): the VPC dataplane and security groups\nvxlan\nbridge\nbr_netfilter\n' > "$tmp"
  install_file "$tmp" "$conf" 0644
  rm -f "$tmp"
  if on_machine; then
    modprobe -a vxlan bridge br_netfilter || say "warning: could not load vxlan/bridge/br_netfilter"
  fi
}

kvm_report() {
  if grep -qE '\b(vmx|svm)\b' /proc/cpuinfo && [ -r /dev/kvm ]; then
    say "the CPU has vmx/svm and /dev/kvm exists: guests run under KVM (KUMO_AGENT_HYPERVISOR=auto)"
  else
    say "no vmx/svm or no /dev/kvm: guests run under QEMU's TCG emulation (slow); docs/deploy.md"
  fi
  # libvirtd runs QEMU as libvirt-qemu. When /dev/kvm exists but that user cannot open it (no
  # udev rule giving it group kvm, mode 0660: containers, hand-made /dev), libvirt finds its
  # QEMU capability cache stale at every call ("KVM was enabled when probing ... but it is not
  # available now") and probes QEMU again, seconds each time: every launch takes minutes.
  if [ -e /dev/kvm ] && id libvirt-qemu >/dev/null 2>&1 &&
     ! runuser -u libvirt-qemu -- test -r /dev/kvm -a -w /dev/kvm 2>/dev/null; then
    say "warning: /dev/kvm is not usable by libvirt-qemu (udev normally makes it root:kvm 0660): libvirtd re-probes QEMU at every call; give it group kvm, mode 0660"
  fi
}

# NBD over TLS with QEMU < 8.0 (Debian 12: 7.2): every read of a volume waits ~40 ms for this
# host's delayed ACK unless its route to the storage node says `quickack 1`. Kumo never changes
# the host's routes: advice only (docs/deploy.md "NBD over TLS: acknowledge at once").
nbd_tls_quickack_note() {
  grep -qE '^[[:space:]]*nbd_tls[[:space:]]*=[[:space:]]*1' "$(target /etc/libvirt/qemu.conf)" 2>/dev/null || return 0
  ip -4 route show 2>/dev/null | grep -q 'quickack 1' && return 0
  say "note: NBD over TLS (qemu.conf nbd_tls = 1) and no route with quickack: with a QEMU < 8.0 storage node, volume reads wait ~40 ms each; add e.g. 'ip route replace <storage node's NBD address>/32 dev <device> quickack 1' (docs/deploy.md \"NBD over TLS: acknowledge at once\")"
}

# ---- the run -----------------------------------------------------------------------------------
if on_machine; then
  check_debian
  ensure_packages qemu-system-x86 qemu-utils qemu-block-extra libvirt-daemon-system \
    libvirt-clients nftables dnsmasq-base kmod
  ensure_venv ""
  kvm_report
  nbd_tls_quickack_note
fi
write_env agent
if [ "$PRINT_CONFIG" = 0 ]; then
  disable_libvirt_default_network
  ensure_modules
  mkdir -p "$(target /var/lib/kumo/agent)"
fi
if [ "$PRINT_CONFIG" = 0 ] && [ -z "$(env_value agent KUMO_AGENT_CONTROLLER_URL)" ]; then
  say "warning: no KUMO_AGENT_CONTROLLER_URL: this host will not join (--controller-url)"
fi
if [ "$PRINT_CONFIG" = 0 ] && [ "$(effective_auth)" = token ] && [ -z "$(env_value agent KUMO_AGENT_TOKEN)" ]; then
  say "warning: no KUMO_AGENT_TOKEN: every request is refused (--token-file)"
fi
state_dir="$(env_value agent KUMO_AGENT_STATE_DIR)"
if [ "$PRINT_CONFIG" = 0 ] && [ "$(effective_auth)" = mtls ] &&
   [ ! -s "$(target "${state_dir:-/var/lib/kumo/agent}/tls/host.pem")" ] &&
   [ -z "$(env_value agent KUMO_AGENT_JOIN_TOKEN)" ]; then
  say "warning: no certificate for this host and no join token: the agent cannot start (--join-token-file)"
fi
install_unit kumo-agent.service
start_unit kumo-agent.service
