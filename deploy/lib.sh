# shellcheck shell=bash
# Shared set-up steps for deploy/install.sh and deploy/test.sh (sourced, not run).
# Idempotent and quick when everything is already there: apt runs only when a package is missing,
# pip only when pyproject.toml changed since the last install.
set -euo pipefail

KUMO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUMO_VENV="$KUMO_ROOT/.venv"

# Debian packages Kumo needs on a host (hypervisor, image building, dataplane, lab).
KUMO_DEBIAN_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
  nftables iproute2 bridge-utils dnsmasq-base kmod procps util-linux
  busybox-static dropbear-bin openssh-client curl socat
  syslinux syslinux-common mtools dosfstools fdisk e2fsprogs genisoimage xorriso cpio
  mmdebstrap zstd
)

log() { printf '\033[1m[kumo]\033[0m %s\n' "$*"; }

require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "run as root (the lab creates network namespaces and runs libvirtd)" >&2
    exit 1
  fi
}

# Extra packages only the test suite needs: a PostgreSQL server binary for the controller's
# PostgreSQL tests (they run their own throw-away server on a unix socket), and a single-node
# Ceph cluster plus QEMU's rbd driver for the RBD volume backend's tests (tests/lab/ceph_support.py
# starts a scratch cluster inside a namespace of its own).
# pgbouncer: the change feed's test behind a connection pooler (tests/functional/test_change_feed_pgbouncer.py).
# shellcheck disable=SC2034  # used by deploy/test.sh
KUMO_TEST_DEBIAN_PACKAGES=(postgresql pgbouncer ceph-mon ceph-osd ceph-mgr ceph-common qemu-block-extra)
# The deploy/ checks (tests/unit/test_deploy_files.py): systemd-analyze verify/security on the
# units (works without systemd as PID 1), shellcheck on the scripts, `ruby -c` on the Vagrantfile.
KUMO_TEST_DEBIAN_PACKAGES+=(systemd shellcheck ruby)
# `vagrant validate` on the Vagrantfile with the libvirt provider's own checks
# (tests/unit/test_setup_contract.py): no VM is started.
KUMO_TEST_DEBIAN_PACKAGES+=(vagrant vagrant-libvirt)
# The web console's browser tests (tests/functional/test_console_browser.py): Playwright drives
# Debian's headless Chromium (/usr/bin/chromium); `playwright install` is never run.
KUMO_TEST_DEBIAN_PACKAGES+=(chromium)

ensure_system_packages() {
  local missing=()
  for p in "${KUMO_DEBIAN_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Debian's postgresql creates (and, under systemd, starts) a main cluster; the tests never
    # use it, so tell postgresql-common not to create one.
    mkdir -p /etc/postgresql-common
    [ -e /etc/postgresql-common/createcluster.conf ] ||
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  fi
  stop_system_libvirt_default_network
}

# Debian's libvirt enables a 'default' NAT network (virbr0) in the machine's own namespace.
# Kumo never uses it; on a machine where a system libvirtd runs, make sure it is down.
stop_system_libvirt_default_network() {
  if [ -S /run/libvirt/libvirt-sock ] && command -v virsh >/dev/null; then
    virsh -c qemu:///system net-autostart default --disable >/dev/null 2>&1 || true
    virsh -c qemu:///system net-destroy default >/dev/null 2>&1 || true
  fi
}

ensure_venv() {
  local stamp="$KUMO_VENV/.kumo-installed"
  local want
  want="$(sha256sum "$KUMO_ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -x "$KUMO_VENV/bin/python" ]; then
    log "creating the virtual environment $KUMO_VENV"
    python3 -m venv "$KUMO_VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Kumo and its Python dependencies"
    "$KUMO_VENV/bin/pip" install -q --upgrade pip
    # shellcheck disable=SC1087  # pip extras, not an array
    "$KUMO_VENV/bin/pip" install -q -e "$KUMO_ROOT[test,postgres]"
    echo "$want" > "$stamp"
  fi
}

ensure_images() {
  local name
  for name in "$@"; do
    log "machine image $name (built once, then cached)"
    "$KUMO_VENV/bin/kumo" image build "$name"
  done
}
