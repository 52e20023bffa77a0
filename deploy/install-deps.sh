#!/usr/bin/env bash
# Install the Debian packages shisa and its tests need (idempotent).
# Podman (with runc: crun fails on this kind of machine's hybrid cgroups),
# OpenLDAP for the test and demo directory, Slurm and munge for /job,
# squashfs-tools and siftool for SIF files.
set -euo pipefail
PKGS=(podman runc slapd ldap-utils busybox-static curl openssh-server openssh-client docker-registry siftool squashfs-tools slurmctld slurmd slurm-client munge util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
