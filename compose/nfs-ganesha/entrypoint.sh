#!/bin/sh
# Start the portmapper, then NFS-Ganesha in the foreground.
set -eu

# Runtime directories that systemd would create (tmpfiles/RuntimeDirectory).
mkdir -p /run/rpcbind /run/ganesha /var/lib/nfs/ganesha /export
chown _rpc:root /run/rpcbind

# rpcbind puts itself in the background; -w keeps registrations across its
# restarts. Ganesha registers nfs (2049) and mountd (20048) with it.
rpcbind -w

# Ganesha's start-up complaints about D-Bus and Kerberos are harmless.
exec ganesha.nfsd -F -f /etc/ganesha/ganesha.conf -L /dev/stdout -N NIV_WARN
