#!/bin/sh
[# PgBouncer's pause watchdog: a sidecar task beside PgBouncer on Nomad, a supervised process
   under `pgnomad dev`. pgnomad PAUSEs PgBouncer around a switchover and RESUMEs it, and a
   guard process it starts RESUMEs instead should pgnomad be killed. Both run where the
   operator runs pgnomad: should that machine sleep, crash or lose its network mid-window,
   nothing would lift the PAUSE and every client would wait on it. This lifts it from
   PgBouncer's side once clients have waited `max_pause` without a break. Waiting is what it
   watches (PgBouncer 1.18 has no SHOW STATE): a pool that is only busy makes clients wait
   too, and the RESUME then fails harmlessly ("pooler is not paused/suspended"). #]
limit=[[ stack.pgbouncer.max_pause_secs ]]
[# A quoted here-document takes the password as it is, whatever characters it holds. #]
PGPASSWORD=$(cat <<'SECRET'
[[ rt.secrets.pgbouncer_auth_password ]]
SECRET
)
export PGPASSWORD PGCONNECT_TIMEOUT=5
console() {
    psql -X -A -q -P footer=off -h '[[ rt.pgbouncer_admin_host ]]' -p "[[ rt.pgbouncer_listen_port ]]" \
        -U pgbouncer_auth -d pgbouncer "$@"
}
[# The Nth |-separated field of a row, into $field. #]
field() {
    field=$2
    n=1
    while [ "$n" -lt "$1" ]; do
        field=${field#*|}
        n=$((n + 1))
    done
    field=${field%%|*}
}
[# SHOW POOLS every second, in one admin session: a login a second would fill PgBouncer's log. #]
pools() {
    while echo 'SHOW POOLS;'; do
        sleep 1
    done | console 2>/dev/null
}
echo "pause-watchdog: RESUMEs PgBouncer once clients have waited ${limit}s on it" >&2
[# Nomad's kill signal (SIGINT) or the dev supervisor's SIGTERM ends the whole process group:
   the shell may be PID 1 of its container, which ignores signals it has no trap for, and the
   session's psql would otherwise outlive it. The pipeline runs in the background so that the
   trap runs at once (a shell runs traps only between commands). #]
trap 'trap - INT TERM; kill 0 2>/dev/null; exit 0' INT TERM
while :; do
    pools | {
        waited=0 quiet=0 cooldown=0 waiting=0 longest=0 waiting_col=0 longest_col=0
        while IFS= read -r row; do
            case $row in
            *'|cl_waiting|'*)
                [# A header: the previous answer is complete. Seconds of waiting are counted
                   one per answer; a client that logs in during a PAUSE waits with maxwait 0. #]
                if [ "$waiting" -gt 0 ]; then
                    quiet=0
                    waited=$((waited + 1))
                elif [ "$waited" -gt 0 ]; then
                    [# Clients that give up (a connect timeout) and come straight back leave
                       gaps of a moment: only a quiet spell ends the wait. #]
                    quiet=$((quiet + 1))
                    waited=$((waited + 1))
                    if [ "$quiet" -ge 5 ]; then
                        waited=0
                    fi
                fi
                if [ "$longest" -gt "$waited" ]; then
                    waited=$longest
                fi
                if [ "$cooldown" -gt 0 ]; then
                    cooldown=$((cooldown - 1))
                elif [ "$waited" -ge "$limit" ]; then
                    if console -c RESUME >/dev/null 2>&1; then
                        echo "pause-watchdog: clients had waited ${waited}s on a PAUSE no one lifted: RESUMEd PgBouncer" >&2
                    else
                        [# Not paused, only busy: ask again after another max_pause. #]
                        cooldown=$limit
                    fi
                    waited=0
                fi
                waiting=0 longest=0 n=0
                rest=$row
                while [ -n "$rest" ]; do
                    n=$((n + 1))
                    case ${rest%%|*} in
                    cl_waiting) waiting_col=$n ;;
                    maxwait) longest_col=$n ;;
                    esac
                    case $rest in
                    *'|'*) rest=${rest#*|} ;;
                    *) rest= ;;
                    esac
                done
                ;;
            *)
                field "$waiting_col" "$row"
                waiting=$((waiting + field))
                field "$longest_col" "$row"
                if [ "$field" -gt "$longest" ]; then
                    longest=$field
                fi
                ;;
            esac
        done
    } &
    wait $!
    [# The session ended (PgBouncer restarting): a new one. #]
    sleep 1 &
    wait $!
done
