#!/bin/sh
# boot.sh - kumo-tiny first-stage system start (run by /etc/init.d/rcS from busybox init):
# NoCloud seed -> hostname, network, SSH keys, dropbear, httpd, user-data -> KUMO-READY on ttyS0.
# A bad or missing seed never stops the boot: it prints "kumo-tiny: seed error: ..." and falls back
# to DHCP and the default hostname.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
KUMO_LIB=/lib/kumo
. $KUMO_LIB/seed.sh
say() { echo "kumo-tiny: $*" > /dev/console; }
seed_error() { say "seed error: $*"; }
RUN=/run/kumo; STATE=/var/lib/kumo
mkdir -p $RUN $STATE /root/.ssh /etc/dropbear

# ---- find and read the seed (IDE cdrom /dev/sr0, or any block device labelled cidata) ----
find_seed() {
  i=0
  while [ $i -lt 30 ]; do
    for d in /dev/sr0 $(findfs LABEL=cidata 2>/dev/null) $(findfs LABEL=CIDATA 2>/dev/null); do
      [ -b "$d" ] || continue
      mkdir -p $RUN/seed-mnt
      if mount -o ro "$d" $RUN/seed-mnt 2>/dev/null; then
        if [ -f $RUN/seed-mnt/meta-data ] || [ -f $RUN/seed-mnt/user-data ]; then
          mkdir -p $RUN/seed; cp $RUN/seed-mnt/* $RUN/seed/ 2>/dev/null
          umount $RUN/seed-mnt; echo "$d"; return 0
        fi
        umount $RUN/seed-mnt
      fi
    done
    i=$((i + 1)); usleep 100000
  done
  return 1
}

iid=""; host=""
: > $RUN/meta.kv; : > $RUN/user.kv; : > $RUN/net.kv
if seed_dev=$(find_seed); then
  if [ ! -f $RUN/seed/meta-data ]; then
    seed_error "meta-data missing on $seed_dev"
  elif ! msg=$(yaml_flatten $RUN/seed/meta-data $RUN/meta.kv); then
    seed_error "meta-data: $msg"
  else
    iid=$(kv_get $RUN/meta.kv instance-id)
    host=$(kv_get $RUN/meta.kv local-hostname)
    [ -n "$iid" ] || seed_error "meta-data has no instance-id"
  fi
  if [ -f $RUN/seed/user-data ] && head -n1 $RUN/seed/user-data | grep -q '^#cloud-config'; then
    msg=$(yaml_flatten $RUN/seed/user-data $RUN/user.kv) || seed_error "user-data: $msg"
  fi
  if [ -s $RUN/seed/network-config ]; then
    msg=$(yaml_flatten $RUN/seed/network-config $RUN/net.kv) || { seed_error "network-config: $msg"; : > $RUN/net.kv; }
  fi
else
  seed_error "no NoCloud seed found (no /dev/sr0 or cidata filesystem)"
fi
iid=$(echo "$iid" | tr -cd 'A-Za-z0-9._-' | cut -c1-64)
[ -n "$iid" ] || iid=iid-unknown
echo "$iid" > $RUN/instance-id

# ---- hostname ----
[ -z "$host" ] && host=$(kv_get $RUN/user.kv hostname)
h=$(sanitize_hostname "$host")
[ -n "$host" ] && [ "$h" != "$host" ] && seed_error "local-hostname '$host' sanitized to '$h'"
[ -n "$h" ] || h=kumo-tiny
hostname "$h"; echo "$h" > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost\n' "$h" > /etc/hosts
say "hostname=$h instance-id=$iid"

# ---- network ----
ip link set lo up
idvar() { echo "if_$(echo "$1" | tr -c 'A-Za-z0-9_\n' _)"; }  # ids are [A-Za-z0-9_.-] (net_plan)
resolve_if() { # MAC NAME -> interface
  if [ "$1" != - ]; then
    for n in /sys/class/net/*; do
      [ "$(cat $n/address 2>/dev/null)" = "$(echo "$1" | tr A-F a-f)" ] && { basename $n; return 0; }
    done
    return 1
  fi
  for n in /sys/class/net/$2; do [ -e "$n" ] && { basename "$n"; return 0; }; done
  return 1
}
dhcp() { # IFACE
  ip link set "$1" up
  udhcpc -i "$1" -s /usr/share/udhcpc/default.script -p $RUN/udhcpc.$1.pid -t 4 -T 1 -A 5 -b -S > /dev/null 2>&1
}
: > $RUN/resolv.conf
net_ok=0
if [ -s $RUN/net.kv ]; then
  if plan=$(net_plan $RUN/net.kv); then
    echo "$plan" > $RUN/net.plan
    while read -r verb id a b c; do
      case "$verb" in
        iface)
          if ! ifc=$(resolve_if "$a" "${b:-$id}"); then
            [ "$b" = - ] && [ "$a" = - ] && ifc=$(resolve_if - "$id")
          fi
          if [ -z "$ifc" ]; then seed_error "network-config: no interface matches '$id'"; eval "$(idvar "$id")="; continue; fi
          if [ "$c" != - ] && [ "$c" != "$ifc" ]; then ip link set "$ifc" down; ip link set "$ifc" name "$c" && ifc=$c; fi
          ip link set "$ifc" up
          net_ok=1  # at least one NIC configured from network-config: no DHCP fallback
          eval "$(idvar "$id")=\$ifc" ;;
        *)
          [ "$verb" = dns ] || [ "$verb" = search ] || eval "ifc=\$$(idvar "$id")"
          case "$verb" in
            addr) [ -n "$ifc" ] && ip addr add "$a" dev "$ifc" ;;
            mtu) [ -n "$ifc" ] && ip link set "$ifc" mtu "$a" ;;
            dhcp) [ -n "$ifc" ] && dhcp "$ifc" ;;
            route) [ -n "$ifc" ] && ip route add "$a" via "$b" dev "$ifc" ${c:+metric "$c"} ;;
            dns) echo "nameserver $id" >> $RUN/resolv.conf ;;
            search) echo "search $id" >> $RUN/resolv.conf ;;
          esac ;;
      esac
    done < $RUN/net.plan
  else
    seed_error "network-config: $(echo "$plan" | tail -n1 | sed 's/^error: //')"
  fi
fi
[ -s $RUN/resolv.conf ] && cp $RUN/resolv.conf /etc/resolv.conf
if [ $net_ok = 0 ]; then
  for n in /sys/class/net/*; do
    n=$(basename $n); [ "$n" = lo ] && continue
    dhcp "$n"
  done
fi

# ---- SSH: keys from the seed, dropbear with host keys made at first use ----
ssh_keys $RUN/meta.kv $RUN/user.kv > $RUN/keys
if [ -s $RUN/keys ]; then
  cat /root/.ssh/authorized_keys $RUN/keys 2>/dev/null | awk '!seen[$0]++' > $RUN/ak
  mv $RUN/ak /root/.ssh/authorized_keys
fi
chmod 700 /root /root/.ssh; chmod 600 /root/.ssh/authorized_keys 2>/dev/null
dropbear -R -s -P $RUN/dropbear.pid

# ---- HTTP on port 80 answering the instance-id ----
mkdir -p /srv/www
echo "$iid" > /srv/www/index.html
cp /srv/www/index.html /srv/www/instance-id
httpd -p 80 -h /srv/www

# ---- user-data script: once per instance-id, output on the console ----
if [ -f $RUN/seed/user-data ] && head -c2 $RUN/seed/user-data | grep -q '^#!'; then
  if [ ! -e "$STATE/user-data.done.$iid" ]; then
    cp $RUN/seed/user-data $STATE/user-data; chmod 700 $STATE/user-data
    interp=$(head -n1 $STATE/user-data | sed 's/^#! *//; s/ .*//')
    say "running user-data ($interp)"
    if [ -x "$interp" ]; then $STATE/user-data; else sh $STATE/user-data; fi > /dev/console 2>&1 < /dev/null
    say "user-data exited $?"
    touch "$STATE/user-data.done.$iid"
  fi
fi
# ---- #cloud-config runcmd (string items, one command each): once per instance-id, like a script ----
if [ -s $RUN/user.kv ] && [ ! -e "$STATE/runcmd.done.$iid" ]; then
  kv_list $RUN/user.kv runcmd > $RUN/runcmd
  if [ -s $RUN/runcmd ]; then
    { echo '#!/bin/sh'; cat $RUN/runcmd; } > $STATE/runcmd.sh; chmod 700 $STATE/runcmd.sh
    say "running cloud-config runcmd ($(wc -l < $RUN/runcmd) commands)"
    sh $STATE/runcmd.sh > /dev/console 2>&1 < /dev/null
    say "runcmd exited $?"
  fi
  touch "$STATE/runcmd.done.$iid"
fi
sync  # what boot and user-data wrote survives a hard power-off from here on
echo "KUMO-READY instance-id=$iid" > /dev/console
