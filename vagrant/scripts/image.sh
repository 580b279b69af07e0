#!/usr/bin/env bash
# Build the pgnomad Postgres image on this node from packs/image/Dockerfile in the synced
# repository, tagged pgnomad/postgres:<pg major>. Nomad's Docker driver uses a local image
# (a tag other than "latest" is not pulled when present). Docker's layer cache keeps re-runs
# cheap, so this is idempotent. Set PGNOMAD_SKIP_IMAGE=1 to skip.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env REPO_DIR

context="${REPO_DIR}/packs/image"
if [[ "${PGNOMAD_SKIP_IMAGE:-0}" == "1" ]]; then
  log "PGNOMAD_SKIP_IMAGE=1: not building ${POSTGRES_IMAGE}"
  exit 0
fi
if [[ ! -f "${context}/Dockerfile" ]]; then
  log "WARNING: ${context}/Dockerfile not found; ${POSTGRES_IMAGE} is not built and"
  log "         'pgnomad run' will fail to start Postgres until 'vagrant provision --provision-with image'"
  exit 0
fi
log "building ${POSTGRES_IMAGE} from ${context}/Dockerfile"
docker build --quiet --build-arg "PG_MAJOR=${PG_MAJOR}" -t "${POSTGRES_IMAGE}" -f "${context}/Dockerfile" "${context}"
docker image inspect --format '{{.Id}}' "${POSTGRES_IMAGE}"
