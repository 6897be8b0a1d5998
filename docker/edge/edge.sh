#!/bin/sh
# The edge's PID 1: nginx in the foreground with the rendered config, and a
# watch on the app plane's replicas and on the htpasswd. nginx (open source)
# resolves `ap` only when it loads its config; when `docker compose up --scale
# ap=N` changes the replicas, this reloads nginx so the edge uses every one of
# them. The htpasswd is written by the control plane into a volume of its own
# (read-only here; nginx.conf is in another volume the control plane never
# mounts); nginx reads it per request, and a change also reloads nginx, so the
# edge never keeps serving from a stale view of it. It also watches the TLS
# certificate and key (compose secrets, bind-mounted): when the operator
# rewrites them (`productionlab tls rotate --dir secrets`) and `nginx -t`
# accepts the pair, nginx reloads gracefully; a half-written or mismatched pair
# is retried on the next look, never loaded.
set -eu
conf=${PLAB_EDGE_CONF:-/var/lib/productionlab/edge/nginx.conf}
htpasswd=${PLAB_EDGE_HTPASSWD:-/var/lib/productionlab/htpasswd/htpasswd}
upstream=${PLAB_AP_HOST:-ap}
every=${PLAB_EDGE_RESOLVE_SECONDS:-5}
tls_files=${PLAB_EDGE_TLS_FILES:-/run/secrets/tls_crt /run/secrets/tls_key}

replicas() {
  getent ahostsv4 "$upstream" | awk '{ print $1 }' | sort -u | tr '\n' ' '
}

users_file() {
  cksum "$htpasswd" 2>/dev/null || echo missing
}

tls_sum() {
  # shellcheck disable=SC2086 # a list of paths
  cat $tls_files 2>/dev/null | cksum
}

mkdir -p /tmp/nginx
nginx -e stderr -t -q -c "$conf"
nginx -e stderr -c "$conf" &
master=$!
trap 'kill -QUIT "$master" 2>/dev/null; wait "$master"; exit 0' TERM INT QUIT
known=$(replicas || true)
users=$(users_file)
tls_known=$(tls_sum)
echo "edge: nginx started; app plane replicas: ${known:-none}" >&2
while kill -0 "$master" 2>/dev/null; do
  sleep "$every" &
  wait $! || true
  current=$(replicas || true)
  now_users=$(users_file)
  if [ "$now_users" != "$users" ]; then
    echo "edge: htpasswd changed; reloading nginx" >&2
    if nginx -e stderr -t -q -c "$conf"; then
      kill -HUP "$master"
      users=$now_users
    fi
  fi
  if [ -n "$current" ] && [ "$current" != "$known" ]; then
    echo "edge: app plane replicas now ${current}(were ${known:-none}); reloading nginx" >&2
    if nginx -e stderr -t -q -c "$conf"; then
      kill -HUP "$master"
      known=$current
    fi
  fi
  tls_now=$(tls_sum)
  if [ "$tls_now" != "$tls_known" ] && nginx -e stderr -t -q -c "$conf"; then
    echo "edge: TLS certificate or key changed; reloading nginx" >&2
    kill -HUP "$master"
    tls_known=$tls_now
  fi
done
wait "$master"
