#!/usr/bin/env bash
# MinIO on node1: the S3-compatible repository for pgBackRest (bucket "pgbackrest",
# https://<node1>:9000, path-style). Pinned release, verified against MINIO_SHA256.
# TLS because pgBackRest reaches S3 over HTTPS only; the certificate is self-signed for the
# node's address, so the lab stack sets verify_tls = false.
# Idempotent.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env NODE_IP

if ! { [[ -x /usr/local/bin/minio ]] && echo "${MINIO_SHA256}  /usr/local/bin/minio" | sha256sum --check --strict --quiet; }; then
  tmp="$(mktemp -d)"
  url="https://dl.min.io/server/minio/release/linux-amd64/archive/minio.${MINIO_RELEASE}"
  log "downloading MinIO ${MINIO_RELEASE}"
  curl -fsSL --retry 3 -o "$tmp/minio" "$url"
  echo "${MINIO_SHA256}  $tmp/minio" | sha256sum --check --strict --quiet ||
    die "MinIO ${MINIO_RELEASE} does not match the pinned SHA256 ${MINIO_SHA256}"
  install -m 0755 "$tmp/minio" /usr/local/bin/minio
  rm -rf "$tmp"
fi

id minio-user >/dev/null 2>&1 || useradd --system --home-dir /srv/minio --shell /usr/sbin/nologin minio-user
install -d -o minio-user -g minio-user -m 0750 /srv/minio
install -d -o minio-user -g minio-user -m 0750 /srv/minio-certs
if [[ ! -s /srv/minio-certs/public.crt ]]; then
  log "creating MinIO's self-signed TLS certificate for ${NODE_IP}"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=${NODE_IP}" \
    -addext "subjectAltName=IP:${NODE_IP}" \
    -keyout /srv/minio-certs/private.key -out /srv/minio-certs/public.crt 2>/dev/null
  chown minio-user:minio-user /srv/minio-certs/private.key /srv/minio-certs/public.crt
  chmod 0600 /srv/minio-certs/private.key
fi

changed=0
write_if_changed /etc/default/minio 0600 <<ENV && changed=1
MINIO_ROOT_USER=$(secret minio-root-user)
MINIO_ROOT_PASSWORD=$(secret minio-root-password)
MINIO_VOLUMES=/srv/minio
MINIO_OPTS="--address ${NODE_IP}:${MINIO_PORT} --console-address ${NODE_IP}:9001 --certs-dir /srv/minio-certs"
ENV

write_if_changed /etc/systemd/system/minio.service 0644 <<'UNIT' && changed=1
[Unit]
Description=MinIO (S3 repository for pgBackRest)
Wants=network-online.target
After=network-online.target

[Service]
User=minio-user
Group=minio-user
EnvironmentFile=/etc/default/minio
ExecStart=/usr/local/bin/minio server $MINIO_OPTS $MINIO_VOLUMES
Restart=always
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable minio
if ((changed)) || ! systemctl is-active --quiet minio; then
  systemctl restart minio
fi
wait_for 60 "MinIO on ${NODE_IP}:${MINIO_PORT}" curl -fsS --cacert /srv/minio-certs/public.crt "https://${NODE_IP}:${MINIO_PORT}/minio/health/live"

# The bucket, with Debian's awscli (no second download to pin).
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=us-east-1
AWS_ACCESS_KEY_ID="$(secret minio-root-user)"
AWS_SECRET_ACCESS_KEY="$(secret minio-root-password)"
s3=(aws --endpoint-url "https://${NODE_IP}:${MINIO_PORT}" --ca-bundle /srv/minio-certs/public.crt s3api)
if "${s3[@]}" head-bucket --bucket "${MINIO_BUCKET}" >/dev/null 2>&1; then
  log "bucket ${MINIO_BUCKET} exists"
else
  "${s3[@]}" create-bucket --bucket "${MINIO_BUCKET}" >/dev/null
  log "created bucket ${MINIO_BUCKET}"
fi
