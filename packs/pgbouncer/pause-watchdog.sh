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
        -U pgbouncer_auth -d pgbouncer -c "$1"
}
echo "pause-watchdog: RESUMEs PgBouncer once clients have waited ${limit}s on it" >&2
waiting_since=
quiet=0
while sleep 1; do
    if ! pools=$(console 'SHOW POOLS' 2>/dev/null); then
        waiting_since=
        continue
    fi
    [# How many clients wait and the longest wait, over every pool (columns found by name). #]
    counts=$(printf '%s\n' "$pools" | awk -F'|' '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { waiting += $col["cl_waiting"]; if ($col["maxwait"] > longest) longest = $col["maxwait"] }
        END { print waiting + 0, longest + 0 }')
    waiting=${counts% *}
    longest=${counts#* }
    now=$(date +%s)
    if [ "$waiting" -eq 0 ]; then
        [# Clients that give up (a connect timeout) and come straight back leave gaps of a
           moment: only a quiet spell ends the wait. #]
        quiet=$((quiet + 1))
        if [ "$quiet" -ge 5 ]; then
            waiting_since=
        fi
        continue
    fi
    quiet=0
    [# A client that logs in during a PAUSE waits with maxwait 0: count from its first sight. #]
    waiting_since=${waiting_since:-$now}
    waited=$((now - waiting_since))
    if [ "$longest" -gt "$waited" ]; then
        waited=$longest
    fi
    if [ "$waited" -lt "$limit" ]; then
        continue
    fi
    if console RESUME >/dev/null 2>&1; then
        echo "pause-watchdog: clients had waited ${waited}s on a PAUSE no one lifted: RESUMEd PgBouncer" >&2
    fi
    waiting_since=
done
