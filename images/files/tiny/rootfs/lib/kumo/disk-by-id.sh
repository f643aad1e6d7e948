#!/bin/sh
# disk-by-id.sh - keeps /dev/disk/by-id/virtio-<serial> -> ../../vdX for every virtio disk, the
# names udev gives on bigger distributions, so a guest finds a Kumo volume by its id (a volume's
# serial is "vol" + its 17 hex digits) whatever vd letter it was plugged in as.
# kumo-tiny has no udev. busybox mdev could do this from hotplug events, but mdev applies its
# rules (or its 0:0 660 default) to every device it is told about, re-permissioning the devtmpfs
# nodes boot relies on; a scan of /sys/block once a second touches only these links. Volumes are
# hot-plugged rarely and a link at most a second late is what udev's own settle delay gives too.
# Runs in the background from /etc/init.d/rcS for the life of the guest.
dir=/dev/disk/by-id
mkdir -p $dir
while :; do
  for sys in /sys/block/vd*; do
    [ -e "$sys" ] || continue
    dev=${sys##*/}
    serial=$(cat "$sys/serial" 2>/dev/null | tr -cd 'A-Za-z0-9_.-')
    [ -n "$serial" ] || continue
    [ "$(readlink "$dir/virtio-$serial")" = "../../$dev" ] || ln -sfn "../../$dev" "$dir/virtio-$serial"
  done
  for link in $dir/virtio-*; do  # links whose disk was unplugged
    [ -L "$link" ] || continue
    [ -e "/sys/block/$(basename "$(readlink "$link")")" ] || rm -f "$link"
  done
  sleep 1
done
