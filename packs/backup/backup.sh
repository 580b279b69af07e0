#!/usr/bin/env bash
# Takes one pgBackRest backup of the cluster and expires old ones:
#   backup.sh full|diff|incr
set -euo pipefail

config='[[ rt.config_dir ]]/pgbackrest.conf'
stanza='[[ stack.scope ]]'

fail() {
    printf 'backup.sh: %s\n' "$*" >&2
    exit 1
}

type="${1:-}"
case "$type" in
    full | diff | incr) ;;
    *)
        printf 'usage: %s full|diff|incr\n' "$0" >&2
        exit 2
        ;;
esac

pgbackrest_run() {
    pgbackrest --config="$config" --stanza="$stanza" "$@"
}

# Idempotent; covers a repo that was emptied or a cluster whose primary never got to it.
pgbackrest_run stanza-create || fail "stanza-create for $stanza failed: is a member's pgBackRest TLS server reachable, and the repo writable?"
pgbackrest_run --type="$type" backup || fail "$type backup of $stanza failed"
pgbackrest_run expire || fail "$type backup of $stanza done, but expiring old backups failed"
printf 'backup.sh: %s backup of %s done\n' "$type" "$stanza" >&2
