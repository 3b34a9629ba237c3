#!/bin/sh
# docker-entrypoint.sh for tps-rabbitmq:local (deploy/images/rabbitmq).
#
# Before `rabbitmq-server` starts, writes /etc/rabbitmq/rabbitmq.conf from the
# environment, the way the official image's variables behave:
#   RABBITMQ_DEFAULT_USER, RABBITMQ_DEFAULT_PASS, RABBITMQ_DEFAULT_VHOST
#     the user (administrator) and vhost created when the node's database is
#     new, i.e. on the first start with an empty /var/lib/rabbitmq; later
#     starts keep the users the database holds (as in the official image);
#   loopback_users = none, so that user (or guest) may connect from other
#     containers;
#   log.console = true: logs go to `docker logs` (without colour codes);
#   total_memory_available_override_value: the container's cgroup memory
#     limit when one is set (compose's mem_limit), so the memory alarm fires
#     before the kernel's OOM killer does (the Erlang VM sees the host's RAM).
# A rabbitmq.conf mounted read-only by the user is left alone.
# Any other command (bash, rabbitmqctl ...) is run as given.
set -eu

log() { printf 'docker-entrypoint: %s\n' "$*" >&2; }

if [ "${1:-}" = rabbitmq-server ]; then
    conf=/etc/rabbitmq/rabbitmq.conf
    val=
    for var in RABBITMQ_DEFAULT_USER RABBITMQ_DEFAULT_PASS RABBITMQ_DEFAULT_VHOST; do
        eval "val=\${$var:-}"
        case $val in
            *'
'*) log "$var must be one line"; exit 1 ;;
        esac
    done
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] && [ -z "${RABBITMQ_DEFAULT_PASS:-}" ]; then
        log "RABBITMQ_DEFAULT_USER is set but RABBITMQ_DEFAULT_PASS is not"
        exit 1
    fi

    # The cgroup memory limit (v2, then v1), when lower than the RAM.
    limit=
    if [ -r /sys/fs/cgroup/memory.max ]; then
        limit=$(cat /sys/fs/cgroup/memory.max)
    elif [ -r /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
        limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
    fi
    ram=$(awk '/^MemTotal:/ { printf "%.0f\n", $2 * 1024 }' /proc/meminfo)
    case $limit in
        '' | max | *[!0-9]*) limit= ;;
        *) [ "$limit" -lt "$ram" ] || limit= ;;
    esac

    if { [ -e "$conf" ] && [ -w "$conf" ]; } || { [ ! -e "$conf" ] && [ -w "${conf%/*}" ]; }; then
        tmp=$conf.tmp.$$
        (
            umask 077
            {
                echo "# Written by docker-entrypoint.sh at container start; edits are lost."
                echo "listeners.tcp.default = 5672"
                echo "loopback_users = none"
                echo "log.console = true"
                echo "log.console.level = info"
                echo "log.console.use_colors = off"
                echo "log.file = false"
                [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER"
                [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS"
                [ -z "${RABBITMQ_DEFAULT_VHOST:-}" ] || echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
                [ -z "$limit" ] || echo "total_memory_available_override_value = $limit"
            } >"$tmp"
        )
        mv -f "$tmp" "$conf"
        log "wrote $conf (user ${RABBITMQ_DEFAULT_USER:-guest}${limit:+, memory limit $limit bytes})"
    else
        log "$conf is not writable (mounted?): using it as it is; RABBITMQ_DEFAULT_* are not applied"
    fi
fi

exec "$@"
