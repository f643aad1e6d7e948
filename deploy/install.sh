#!/usr/bin/env bash
# README command 1: install everything Kumo needs on a fresh Debian 12 machine (as root) and bring
# up the all-in-one lab cloud. Safe to run again: it only does what is missing.
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
HOSTS="${KUMO_LAB_HOSTS:-2}"

# shellcheck disable=SC2119  # no extra packages for the lab
ensure_system_packages
ensure_venv
ensure_images kumo-tiny debian-12

log "bringing up the lab cloud with $HOSTS hosts"
"$KUMO_VENV/bin/kumo" lab up --hosts "$HOSTS"

cat <<NEXT

Kumo's lab cloud is up. Next:
  source <($KUMO_VENV/bin/kumo lab env)        # KUMO_URL and the demo account's API key
  export PATH=$KUMO_VENV/bin:\$PATH
  kumo keys create demo
  kumo security-groups list --name default      # then allow SSH in its default group:
  kumo security-groups authorize <sg-id> -p tcp --port 22 --cidr 0.0.0.0/0
  kumo instances run --image kumo-tiny --type t3.micro --key demo --wait
  kumo ssh <instance-id> -- uname -a
  kumo lab down                                  # removes everything the lab made
NEXT
