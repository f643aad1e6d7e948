# seed.sh - NoCloud seed helpers for kumo-tiny (busybox ash). Sourced by /lib/kumo/boot.sh and by
# the host-side unit tests. Nothing here configures the machine: functions read files and print.
KUMO_LIB=${KUMO_LIB:-/lib/kumo}

# yaml_flatten FILE OUT: YAML subset -> "path<TAB>value" lines in OUT. On error prints the reason.
yaml_flatten() {
  awk -f "$KUMO_LIB/yaml2kv.awk" "$1" > "$2" 2> "$2.err"
  rc=$?
  [ $rc -eq 0 ] && return 0
  cat "$2.err"; : > "$2"; return 1
}

# kv_get FILE KEY: the value at KEY (empty if absent)
kv_get() { awk -F '\t' -v k="$2" '$1 == k { print substr($0, length(k) + 2); exit }' "$1"; }

# kv_children FILE PREFIX: distinct child names directly under PREFIX ("" = top level), in order
kv_children() {
  awk -F '\t' -v p="$2" '
    { k = $1; if (p != "") { if (index(k, p ".") != 1) next; k = substr(k, length(p) + 2) }
      sub(/\..*/, "", k); if (!(k in seen)) { seen[k] = 1; print k } }' "$1"
}

# kv_list FILE PREFIX: values of PREFIX.0, PREFIX.1, ... or PREFIX itself when it is a scalar
kv_list() {
  awk -F '\t' -v p="$2" '$1 == p || $1 ~ ("^" p "\\.[0-9]+$") { print substr($0, index($0, "\t") + 1) }' "$1"
}

valid_name() { case "$1" in ""|*[!A-Za-z0-9_.-]*) return 1 ;; esac; [ ${#1} -le 63 ]; }
valid_mac() { echo "$1" | grep -qiE '^([0-9a-f]{2}:){5}[0-9a-f]{2}$'; }
valid_ip() { echo "$1" | grep -qE '^[0-9]{1,3}(\.[0-9]{1,3}){3}$|^[0-9a-fA-F:]*:[0-9a-fA-F:.]*$'; }
valid_cidr() { case "$1" in */*) valid_ip "${1%/*}" && echo "${1##*/}" | grep -qE '^[0-9]{1,3}$' ;; *) return 1 ;; esac; }

# sanitize_hostname NAME: keep [A-Za-z0-9-.], at most 63 chars; empty if nothing is left
sanitize_hostname() { echo "$1" | tr -cd 'A-Za-z0-9.-' | cut -c1-63; }

# net_plan KVFILE: validate a network-config v2 (flattened) and print a plan, one action a line:
#   iface ID MAC|- NAME|- SETNAME|-   addr ID CIDR   route ID TO VIA [METRIC]   dhcp ID
#   mtu ID N   dns IP   search DOMAIN
# Returns 1 with a message on stdout's last line "error: ..." when the config is unusable.
net_plan() {
  f=$1; base=""
  [ -n "$(kv_get "$f" network.version)" ] && base="network."
  ver=$(kv_get "$f" "${base}version")
  [ "$ver" = 2 ] || { echo "error: network-config version '${ver}' is not 2"; return 1; }
  ids=$(kv_children "$f" "${base}ethernets")
  [ -n "$ids" ] || { echo "error: network-config has no ethernets"; return 1; }
  for id in $ids; do
    p="${base}ethernets.$id"
    valid_name "$id" || { echo "error: bad ethernet id '$id'"; return 1; }
    mac=$(kv_get "$f" "$p.match.macaddress"); mname=$(kv_get "$f" "$p.match.name"); set=$(kv_get "$f" "$p.set-name")
    [ -z "$mac" ] || valid_mac "$mac" || { echo "error: bad macaddress '$mac'"; return 1; }
    case "$mname" in ""|*[!A-Za-z0-9_.*-]*) [ -z "$mname" ] || { echo "error: bad match name '$mname'"; return 1; } ;; esac
    [ -z "$set" ] || valid_name "$set" || { echo "error: bad set-name '$set'"; return 1; }
    echo "iface $id ${mac:--} ${mname:--} ${set:--}"
    for a in $(kv_list "$f" "$p.addresses"); do
      valid_cidr "$a" || { echo "error: bad address '$a' (want CIDR)"; return 1; }
      echo "addr $id $a"
    done
    case "$(kv_get "$f" "$p.dhcp4")" in true|True|yes|on) echo "dhcp $id" ;; esac
    mtu=$(kv_get "$f" "$p.mtu")
    if [ -n "$mtu" ]; then echo "$mtu" | grep -qE '^[0-9]+$' || { echo "error: bad mtu '$mtu'"; return 1; }; echo "mtu $id $mtu"; fi
    gw=$(kv_get "$f" "$p.gateway4")
    if [ -n "$gw" ]; then valid_ip "$gw" || { echo "error: bad gateway4 '$gw'"; return 1; }; echo "route $id default $gw"; fi
    n=0
    while :; do
      to=$(kv_get "$f" "$p.routes.$n.to"); via=$(kv_get "$f" "$p.routes.$n.via"); met=$(kv_get "$f" "$p.routes.$n.metric")
      [ -n "$to$via" ] || break
      case "$to" in default|0.0.0.0/0) to=default ;; *) valid_cidr "$to" || valid_ip "$to" || { echo "error: bad route to '$to'"; return 1; } ;; esac
      valid_ip "$via" || { echo "error: bad route via '$via'"; return 1; }
      [ -z "$met" ] || echo "$met" | grep -qE '^[0-9]+$' || { echo "error: bad route metric '$met'"; return 1; }
      echo "route $id $to $via${met:+ $met}"
      n=$((n + 1))
    done
    for ns in $(kv_list "$f" "$p.nameservers.addresses"); do
      valid_ip "$ns" || { echo "error: bad nameserver '$ns'"; return 1; }
      echo "dns $ns"
    done
    for s in $(kv_list "$f" "$p.nameservers.search"); do
      valid_name "$s" || { echo "error: bad search domain '$s'"; return 1; }
      echo "search $s"
    done
  done
  return 0
}

# ssh_keys META_KV USER_KV: authorized keys from meta-data public-keys and cloud-config
# ssh_authorized_keys / users[].ssh_authorized_keys, one per line, deduplicated
ssh_keys() {
  cat "$@" 2>/dev/null | awk -F '\t' '
    $1 ~ /^public-keys($|\.)/ || $1 ~ /^ssh_authorized_keys($|\.[0-9]+$)/ || $1 ~ /^users\.[0-9]+\.ssh_authorized_keys($|\.[0-9]+$)/ {
      v = substr($0, index($0, "\t") + 1)
      if (v ~ /^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+\/=]+( .*)?$/ && !(v in seen)) { seen[v] = 1; print v }
    }'
}
