#!/bin/sh
# The tests' stand-in for `apptainer exec [--nv] SIF CMD...`: Apptainer is not
# packaged for this Debian. Unpacks the SIF's squashfs partition and runs the
# command inside it without root (`unshare -c -R`), with the image's
# environment, as shared/docs/stack-notes.md verifies. Production uses apptainer.
set -eu
[ "${1:-}" = "--nv" ] && shift
sif=$1
shift
off=$(siftool list "$sif" | awk -F'|' '/Squashfs/ { split($4, a, "-"); gsub(/[^0-9]/, "", a[1]); print a[1]; exit }')
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work" 2>/dev/null' EXIT
# As an ordinary user unsquashfs cannot give files their owners; it says so and goes on.
unsquashfs -q -n -o "$off" -d "$work/fs" "$sif" >/dev/null 2>&1 || [ -x "$work/fs/bin/sh" ]
# Not exec: the trap removes the unpacked tree when the command ends.
set +e
unshare -c -R "$work/fs" /bin/sh -c 'for f in /.singularity.d/env/*.sh; do [ -r "$f" ] && . "$f"; done; exec "$@"' sh "$@"
code=$?
exit "$code"
