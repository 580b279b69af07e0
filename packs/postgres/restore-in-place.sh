#!/usr/bin/env bash
# `pgnomad restore --in-place` on Nomad: one phase, on this member's data volume, before
# Patroni starts (a prestart task of every member group while the restore runs).
# - prepare: moves the data directory aside, so that Patroni's custom bootstrap restores the
#   cluster's backups into an empty one; on one member, empties the cluster's keys in the
#   DCS first (Patroni bootstraps only a cluster the DCS does not know).
# - finish: the restore succeeded; removes the data moved aside.
# - revert: the restore failed; puts the data moved aside back (on one member, with the DCS
#   emptied again: the failed attempt may have left its own system identifier there).
# Idempotent: a restarted or rescheduled allocation runs it again, and markers on the volume
# say what is already done.
set -euo pipefail

data='[[ rt.data_dir ]]'
config_dir='[[ rt.config_dir ]]'
scope='[[ stack.scope ]]'
attempt="${PGNOMAD_RESTORE_ATTEMPT:?the restore attempt is not set}"
mode="${PGNOMAD_RESTORE_MODE:?the restore mode is not set}"
root=$(dirname "$data")
aside="$data.pre-restore-$attempt"

log() {
    printf '%s restore-in-place %s (attempt %s): %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$mode" "$attempt" "$*" >&2
}

# Patroni's keys of this cluster, all of them, as `patronictl remove` deletes them: asked
# twice to confirm, and refused while a member holds the leader key.
wipe_dcs() {
    if [ "${PGNOMAD_RESTORE_WIPE:-}" != 1 ]; then
        return 0
    fi
    log "removing cluster $scope from the DCS"
    printf '%s\nYes I am aware\n' "$scope" | patronictl --config-file "$config_dir/patroni.yml" remove "$scope" >&2
}

case "$mode" in
prepare)
    marker="$root/.restore-$attempt-prepared"
    if [ -e "$marker" ]; then
        log "already prepared"
        exit 0
    fi
    if [ -e "$data" ] && [ ! -e "$aside" ]; then
        mv "$data" "$aside"
        log "moved $data aside to $aside"
    fi
    wipe_dcs
    touch "$marker"
    ;;
finish)
    if [ -e "$aside" ]; then
        rm -rf "$aside"
        log "removed $aside"
    fi
    rm -f "$root/.restore-$attempt-prepared" "$root/.restore-$attempt-reverted"
    ;;
revert)
    marker="$root/.restore-$attempt-reverted"
    if [ -e "$marker" ]; then
        log "already reverted"
        exit 0
    fi
    if [ -e "$aside" ]; then
        # What the attempt left: a restored or half-copied data directory, and the one
        # Patroni moved aside after a failed bootstrap (<data>.failed).
        rm -rf "$data" "$data.failed"
        mv "$aside" "$data"
        log "put $aside back to $data"
    fi
    wipe_dcs
    # Kept: a restart of this allocation must not empty the DCS again under a running
    # cluster. It names the attempt that was reverted, nothing more.
    touch "$marker"
    rm -f "$root/.restore-$attempt-prepared"
    ;;
*)
    log "unknown mode"
    exit 2
    ;;
esac
