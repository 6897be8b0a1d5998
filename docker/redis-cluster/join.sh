#!/bin/sh
# Joins the cluster profile's masters into one Redis Cluster, once (docs/COMPOSE.md,
# "Redis Cluster"). Run by the one-shot redis-cluster-init service on every
# `docker compose up`, so it must be idempotent:
#   - every node answers, none knows another and none holds a slot: a new cluster,
#     `redis-cli --cluster create` (which itself refuses a node holding keys);
#   - every node knows all the others and every slot is assigned: joined before,
#     nothing to do (the slot map and node ids are in each node's nodes.conf);
#   - anything else (a create cut short): change nothing, say so, exit non-zero;
#     an operator checks it with `redis-cli --cluster check` (and `fix`).
# Then it waits until every node says cluster_state:ok.
#
# Environment: PLAB_CLUSTER_NODES, "address:port" of each master, space-separated;
# PLAB_CLUSTER_SECRETS, the directory of the TLS files and the password
# (default /run/secrets); PLAB_CLUSTER_WAIT, seconds to wait for nodes and state.
# Nodes are reached by address, never by name (docs/COMPOSE.md).
set -eu

nodes=${PLAB_CLUSTER_NODES:?PLAB_CLUSTER_NODES names the masters}
dir=${PLAB_CLUSTER_SECRETS:-/run/secrets}
wait_for=${PLAB_CLUSTER_WAIT:-180}
REDISCLI_AUTH=$(cat "$dir/redis_cluster_password")  # not on the command line
export REDISCLI_AUTH
tls="--tls --cacert $dir/redis_ca_crt --cert $dir/redis_health_crt --key $dir/redis_health_key"

say() { echo "redis-cluster-init: $*"; }

# cli ADDRESS:PORT COMMAND...: one command to one node, as plab-cluster over TLS
cli() {
    target=$1
    shift
    # shellcheck disable=SC2086 # $tls is a list of options
    redis-cli $tls --user plab-cluster --no-auth-warning -h "${target%:*}" -p "${target##*:}" "$@"
}

# field NODE NAME: a field of the node's CLUSTER INFO ("" while it does not answer)
field() {
    cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

count=0
for node in $nodes; do count=$((count + 1)); done

# every CHECK WHAT: wait until `CHECK <node>` succeeds for every node, at most
# $wait_for seconds in all; else say which node is still not WHAT and fail.
every() {
    waited=0
    for node in $nodes; do
        until "$1" "$node"; do
            if [ "$waited" -ge "$wait_for" ]; then
                say "$node is not $2 after ${wait_for}s"
                exit 1
            fi
            sleep 1
            waited=$((waited + 1))
        done
    done
}
answering() { [ "$(cli "$1" ping 2>/dev/null)" = "PONG" ]; }
state_ok() { [ "$(field "$1" cluster_state)" = "ok" ]; }

every answering answering

new=0
joined=0
for node in $nodes; do
    known=$(field "$node" cluster_known_nodes)
    assigned=$(field "$node" cluster_slots_assigned)
    say "$node knows ${known:-?} node(s), ${assigned:-?} slot(s) assigned"
    if [ "$known" = 1 ] && [ "$assigned" = 0 ]; then new=$((new + 1)); fi
    if [ "$known" = "$count" ] && [ "$assigned" = 16384 ]; then joined=$((joined + 1)); fi
done

if [ "$new" = "$count" ]; then
    say "creating the cluster of $nodes"
    # shellcheck disable=SC2086 # $tls and $nodes are lists
    redis-cli $tls --user plab-cluster --no-auth-warning \
        --cluster create $nodes --cluster-replicas 0 --cluster-yes
elif [ "$joined" = "$count" ]; then
    say "already joined: nothing to do"
else
    say "the nodes are neither new nor one cluster; changing nothing." \
        "Check with: redis-cli --cluster check <address>:<port> (then --cluster fix)"
    exit 1
fi

every state_ok "cluster_state:ok"
say "cluster_state:ok on every node"
