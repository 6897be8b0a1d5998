#!/bin/sh
# Starts a sentinel of the ha profile (docs/COMPOSE.md, "High availability") from
# its own copy of sentinel.conf, which lives in its volume because a sentinel
# rewrites its config with what it learns (the current primary, the replicas and
# sentinels it knows, epochs):
#   - first start: the copy is the rendered sentinel.conf (the secret);
#   - every later start: the copy keeps its state lines, and its access lines
#     ("user ...", "sentinel sentinel-user|sentinel-pass|auth-user|auth-pass ...")
#     are replaced by those of the rendered file, so an upgrade from a copy without
#     ACL users, and a password rotation, take effect on restart.
# Then it runs the given command (e.g. redis-server /data/sentinel.conf --sentinel).
#
# Environment: PLAB_SENTINEL_RENDERED (default /run/secrets/sentinel_conf) and
# PLAB_SENTINEL_CONF (default /data/sentinel.conf).
set -eu

rendered=${PLAB_SENTINEL_RENDERED:-/run/secrets/sentinel_conf}
conf=${PLAB_SENTINEL_CONF:-/data/sentinel.conf}
access='^(user |sentinel (sentinel-user|sentinel-pass|auth-user|auth-pass) )'

if [ ! -f "$conf" ]; then
    install -m 0600 "$rendered" "$conf"
    echo "sentinel-start: $conf copied from $rendered"
else
    next="$conf.plab-next"
    rm -f "$next"
    # the copy without its access lines, then the rendered ones (after the copy's
    # "sentinel monitor", which the per-service lines need before them)
    (
        umask 077
        { grep -Ev "$access" "$conf" || true; grep -E "$access" "$rendered"; } >"$next"
    )
    mv -f "$next" "$conf"
    echo "sentinel-start: the users and sentinel credentials of $conf taken from $rendered"
fi

exec "$@"
