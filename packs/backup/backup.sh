#!/usr/bin/env bash
# Takes one pgBackRest backup of the cluster and expires old ones:
#   backup.sh full|diff|incr
# or answers for the repository (`pgnomad backups` and `restore` dispatch these on Nomad):
#   backup.sh info    pgBackRest's `info --output=json` of the stanza, on stdout
#   backup.sh check   a WAL switch on the primary, returning once that WAL is archived
set -euo pipefail

config='[[ rt.config_dir ]]/pgbackrest.conf'
stanza='[[ stack.scope ]]'

fail() {
    printf 'backup.sh: %s\n' "$*" >&2
    exit 1
}

type="${1:-}"
case "$type" in
    full | diff | incr | info | check) ;;
    *)
        printf 'usage: %s full|diff|incr|info|check\n' "$0" >&2
        exit 2
        ;;
esac

pgbackrest_run() {
    pgbackrest --config="$config" --stanza="$stanza" "$@"
}

[% if rt.repo_host_alloc %]
# The repository host writes its allocation ID into the lock directory on the repository
# volume; the same ID here means this job mounts the very directory it serves. A host volume
# created on more than one node would otherwise split the repository.
repo_host_alloc='[[ rt.repo_host_alloc ]]'
marker='[[ rt.lock_dir ]]/repo-host-[[ stack.cluster ]]'
[ -n "$repo_host_alloc" ] || fail "no repository host passes its check in Consul: is the [[ stack.cluster ]]-repo job running?"
[ "$(cat "$marker" 2>/dev/null || true)" = "$repo_host_alloc" ] ||
    fail "this node's repository volume is not the one the repository host (allocation $repo_host_alloc) serves: create the repository host volume on one node only"
[% endif %]
case "$type" in
    info)
        pgbackrest_run --output=json info
        exit
        ;;
    check)
        pgbackrest_run check || fail "check of $stanza failed: WAL is not being archived into the repository"
        printf 'backup.sh: WAL of %s archived up to now\n' "$stanza" >&2
        exit
        ;;
esac
# Idempotent; covers a repo that was emptied or a cluster whose primary never got to it.
pgbackrest_run stanza-create || fail "stanza-create for $stanza failed: is a member's pgBackRest TLS server reachable, and the repo writable?"
# The members in pgBackRest's pg1…pgN order: with backup-standby it copies from the first
# standby in it, which is how pgnomad names the member a backup read from.
grep -E '^pg[0-9]+-host=' "$config" | sed 's/^/backup.sh: /' >&2 || true
pgbackrest_run --type="$type" backup || fail "$type backup of $stanza failed"
pgbackrest_run expire || fail "$type backup of $stanza done, but expiring old backups failed"
printf 'backup.sh: %s backup of %s done\n' "$type" "$stanza" >&2
