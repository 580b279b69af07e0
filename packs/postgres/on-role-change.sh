#!/usr/bin/env bash
# Patroni runs this
# - as post_bootstrap: `on-role-change.sh <connection string>`, with PGPASSFILE set. It
#   applies bootstrap.sql and waits for it: a failure fails the bootstrap.
# - as on_start / on_role_change: `on-role-change.sh <action> <role> <scope>`. On a primary
#   it applies bootstrap.sql and creates the pgBackRest stanza in the background, under a
#   lock: Patroni kills a callback still running when the next one comes.
# Postgres runs it as restore_command: `on-role-change.sh restore-wal %f %p` (see restore_wal).
# Logs go to stderr, which the supervisor captures.
set -euo pipefail

config_dir='[[ rt.config_dir ]]'
run_dir='[[ rt.run_dir ]]'
pg_port='[[ rt.pg_port ]]'
stanza='[[ stack.scope ]]'
backup='[[ "yes" if stack.backup.enabled else "no" ]]'

log() {
    printf '%s on-role-change (pid %s): %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*" >&2
}

apply_sql() {
    PGOPTIONS='-c synchronous_commit=local' psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 \
        --file="$config_dir/bootstrap.sql" "$@"
}

pgbackrest_run() {
    pgbackrest --config="$config_dir/pgbackrest.conf" --stanza="$stanza" "$@"
}

promoted() {
    exec 9>"$run_dir/on-role-change.lock"
    if ! flock --wait 600 9; then
        log "an earlier run still holds $run_dir/on-role-change.lock; giving up"
        return 1
    fi
    # As postgres over the socket: pg_hba admits this OS user by peer.
    export PGHOST="$run_dir" PGPORT="$pg_port" PGUSER=postgres PGDATABASE=postgres
    local in_recovery=""
    for _ in $(seq 60); do
        in_recovery="$(psql -XAtc 'SELECT pg_is_in_recovery()' 2>/dev/null || true)"
        [ "$in_recovery" = f ] && break
        sleep 1
    done
    if [ "$in_recovery" != f ]; then
        log "Postgres does not accept writes after 60 s (pg_is_in_recovery: '${in_recovery:-no answer}'); nothing done"
        return 1
    fi
    if apply_sql; then
        log "bootstrap.sql applied"
    else
        log "bootstrap.sql failed"
        return 1
    fi
    if [ "$backup" = yes ]; then
        # archive-push fails until the stanza exists; stanza-create is idempotent.
        if ! pgbackrest_run stanza-create; then
            log "pgBackRest stanza-create failed; WAL archiving is failing"
            return 1
        fi
        if archiving_works; then
            log "pgBackRest stanza $stanza ready"
        else
            return 1
        fi
    fi
}

# Whether archive_command works, without a WAL switch where one can hurt. `pgbackrest check`
# forces a switch (even with --no-archive-check), and after a promotion that switch can end a
# segment that the primary archives while a replica has not streamed it (a partition, or
# the next failover while this runs in the background): a replica restoring that segment from
# the repository then replays past the next primary's fork point, and Patroni 3.0.2, which
# checked once before, never rewinds it (the soak saw it in every run). A promoted primary
# archives its new timeline's history file at once: finding it in the repository shows
# archiving works. A cluster that has never archived anything (a fresh bootstrap, before any
# replica) gets the full check.
archiving_works() {
    local timeline row archived failing
    timeline="$(psql -XAtc 'SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)')" || return 1
    if [ "$timeline" = 00000001 ]; then
        # One read of the archiver: the last archived segment, and the last failed one if it
        # failed after that.
        row="$(psql -XAtF ' ' -c "SELECT coalesce(last_archived_wal, '-'), CASE WHEN last_failed_time > coalesce(last_archived_time, '-infinity') THEN last_failed_wal ELSE '' END FROM pg_stat_archiver")" || return 1
        read -r archived failing <<<"$row"
        if [ "$archived" = - ]; then
            pgbackrest_run check && return 0
            log "pgBackRest check failed; WAL archiving is failing"
            return 1
        fi
        [ -z "$failing" ] && return 0
        log "archiving $failing failed after $archived was archived; WAL archiving is failing"
        return 1
    fi
    for _ in $(seq 60); do
        if pgbackrest_run archive-get "$timeline.history" "$run_dir/archived.history" >/dev/null 2>&1; then
            rm -f "$run_dir/archived.history"
            return 0
        fi
        sleep 1
    done
    log "timeline $timeline's history file did not reach the repository in 60 s; WAL archiving is failing"
    return 1
}

# restore_command. A primary that shuts down with archiving on ends its WAL segment (Postgres
# switches WAL at shutdown) and archives it when it can: after a failover that is the old
# timeline's last segment, holding WAL past the point where the new primary forked off. A
# replica that restores it replays past that point and can never follow the new primary;
# Patroni 3.0.2 checks a running replica's position once, when it starts following, and then
# never runs pg_rewind (the soak saw it after partitions and node losses). So a segment of
# timeline T is not restored when a timeline T+1 in the repository forked off T before the
# segment's end: Postgres then takes that WAL from timeline T+1, by streaming or from the
# repository. Exit 1 is "not found" to Postgres.
restore_wal() {
    local file="$1" path="$2"
    # A segment's name: timeline, log and segment number, 8 hex digits each (not a history
    # file). No bash double-bracket tests here: the pack templates use those brackets.
    case "$file" in
        *[!0-9A-F]*) ;;
        *)
            if [ "${#file}" -eq 24 ]; then
                local timeline=$((16#${file:0:8})) log=$((16#${file:8:8})) segment=$((16#${file:16:8}))
                local child history fork
                child="$(printf '%08X' $((timeline + 1))).history"
                history="$run_dir/restore-wal-$$.history"
                if pgbackrest_run archive-get "$child" "$history" >/dev/null 2>&1; then
                    # Lines of a history file: parent timeline, switch point (X/Y), reason.
                    fork="$(awk -v t="$timeline" '$1 == t { print $2 }' "$history")"
                    rm -f "$history"
                    case "$fork" in
                        */*)
                            # pgnomad's clusters have Postgres' default 16 MiB segments.
                            local fork_lsn=$(((16#${fork%/*} << 32) + 16#${fork#*/}))
                            local segment_end=$(((log << 32) + (segment + 1) * 16777216))
                            if ((fork_lsn < segment_end)); then
                                printf 'restore-wal: not restoring %s: timeline %d forked off timeline %d at %s, before its end\n' \
                                    "$file" $((timeline + 1)) "$timeline" "$fork" >&2
                                exit 1
                            fi
                            ;;
                    esac
                fi
            fi
            ;;
    esac
    pgbackrest_run archive-get "$file" "$path"
}

case "$#" in
    1)
        log "post_bootstrap: applying bootstrap.sql"
        apply_sql --dbname="$1"
        ;;
    3)
        action="$1" role="$2"
        case "$action:$role" in
            restore-wal:*)
                restore_wal "$2" "$3"
                ;;
            on_start:master | on_start:primary | on_role_change:master | on_role_change:primary)
                log "$action as $role: preparing the primary in the background"
                promoted </dev/null &
                ;;
        esac
        ;;
    *)
        log "usage: $0 <connection string> | $0 <action> <role> <scope> | $0 restore-wal <file> <path>"
        exit 2
        ;;
esac
