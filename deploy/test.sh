#!/usr/bin/env bash
# README command 2: run Kumo's whole test suite (unit, functional, and lab tests with real guests).
# Installs what it needs first, like command 1, but leaves no lab running afterwards.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

ensure_system_packages "${KUMO_TEST_DEBIAN_PACKAGES[@]}"
ensure_venv
ensure_images kumo-tiny debian-12

cd "$KUMO_ROOT"
exec "$KUMO_VENV/bin/pytest" tests "$@"
