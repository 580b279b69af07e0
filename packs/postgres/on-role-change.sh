#!/usr/bin/env bash
# Patroni runs this
# - as post_bootstrap: `on-role-change.sh <connection string>`, with PGPASSFILE set. It
#   applies bootstrap.sql and waits for it: a failure fails the bootstrap.
# - as on_start / on_role_change: `on-role-change.sh <action> <role> <scope>`. On a primary
#   it applies bootstrap.sql and creates the pgBackRest stanza in the background, under a
#   lock: Patroni kills a callback still running when the next one comes.
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
    local timeline archived failing
    timeline="$(psql -XAtc 'SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)')" || return 1
    if [ "$timeline" = 00000001 ]; then
        archived="$(psql -XAtc "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")" || return 1
        if [ -z "$archived" ]; then
            pgbackrest_run check && return 0
            log "pgBackRest check failed; WAL archiving is failing"
            return 1
        fi
        failing="$(psql -XAtc "SELECT last_failed_wal FROM pg_stat_archiver WHERE last_failed_time > coalesce(last_archived_time, '-infinity')")" || return 1
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

case "$#" in
    1)
        log "post_bootstrap: applying bootstrap.sql"
        apply_sql --dbname="$1"
        ;;
    3)
        action="$1" role="$2"
        case "$action:$role" in
            on_start:master | on_start:primary | on_role_change:master | on_role_change:primary)
                log "$action as $role: preparing the primary in the background"
                promoted </dev/null &
                ;;
        esac
        ;;
    *)
        log "usage: $0 <connection string> | $0 <action> <role> <scope>"
        exit 2
        ;;
esac
