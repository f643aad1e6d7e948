#!/usr/bin/env bash
# README command 2: run Kumo's whole test suite (unit, functional, and lab tests with real guests).
# Installs what it needs first, like command 1, but leaves no lab running afterwards.
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

ensure_system_packages "${KUMO_TEST_DEBIAN_PACKAGES[@]}"
ensure_venv
ensure_images kumo-tiny debian-12

# shellcheck disable=SC2164  # set -e (lib.sh) ends the script if it fails
cd "$KUMO_ROOT"
exec "$KUMO_VENV/bin/pytest" tests "$@"
