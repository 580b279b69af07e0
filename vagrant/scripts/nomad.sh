#!/usr/bin/env bash
# Nomad server + client on every node (3-server quorum), Docker driver with privileged
# containers allowed (the CSI plugin needs them), ACLs, Consul integration with workload
# identities. Set PGNOMAD_HOST_VOLUMES=1 to also declare host volumes (the fallback when CSI is
# not wanted; see docs/multi-host-lab.md). Idempotent: restarts only on change.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env NODE_NAME NODE_IP SERVER_IPS

iface="$(iface_of "$NODE_IP")"
[[ -n "$iface" ]] || die "no interface carries $NODE_IP"

changed=0
write_if_changed /etc/nomad.d/nomad.hcl 0640 <<HCL && changed=1
# Managed by vagrant/scripts/nomad.sh
datacenter = "${DATACENTER}"
region     = "${REGION}"
name       = "${NODE_NAME}"
data_dir   = "/opt/nomad"
bind_addr  = "0.0.0.0"

advertise {
  http = "${NODE_IP}"
  rpc  = "${NODE_IP}"
  serf = "${NODE_IP}"
}

ports {
  http = ${NOMAD_HTTP_PORT}
}

server {
  enabled          = true
  bootstrap_expect = 3
  encrypt          = "$(secret nomad-gossip.key)"
  server_join {
    retry_join = [$(hcl_list "$SERVER_IPS")]
  }
}

client {
  enabled   = true
  node_pool = "${NODE_POOL}"
  # eth0 is Vagrant's NAT interface (the same 10.0.2.15 on every VM); services must
  # advertise the private network address.
  network_interface = "${iface}"
  cni_path          = "/usr/lib/cni"
}

acl {
  enabled = true
}

consul {
  address = "127.0.0.1:${CONSUL_HTTP_PORT}"
  token   = "$(secret consul-nomad.token)"
  # Workload identities: tasks and services log in to Consul through the JWT auth method
  # that scripts/bootstrap.sh creates with 'nomad setup consul'.
  service_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }
  task_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }
}

plugin "docker" {
  config {
    allow_privileged = true
    volumes {
      enabled = true
    }
  }
}

telemetry {
  publish_allocation_metrics = true
  publish_node_metrics       = true
}
HCL

if [[ "${PGNOMAD_HOST_VOLUMES:-0}" == "1" ]]; then
  for i in 0 1 2; do install -d -m 0700 "/srv/pgnomad/pg-data-$i"; done
  write_if_changed /etc/nomad.d/host-volumes.hcl 0640 <<'HCL' && changed=1
# Fallback to CSI: one host volume per Postgres member (storage { type = "host" } in the stack).
client {
  host_volume "pg-data-0" {
    path      = "/srv/pgnomad/pg-data-0"
    read_only = false
  }
  host_volume "pg-data-1" {
    path      = "/srv/pgnomad/pg-data-1"
    read_only = false
  }
  host_volume "pg-data-2" {
    path      = "/srv/pgnomad/pg-data-2"
    read_only = false
  }
}
HCL
elif [[ -f /etc/nomad.d/host-volumes.hcl ]]; then
  rm -f /etc/nomad.d/host-volumes.hcl
  changed=1
fi

# The pgBackRest repository host volume, on node1 ONLY: the repository host job (<c>-repo) and
# the backup jobs land where it is and share it (backup { repo { type = "volume" } } in the
# stack; the lab's stack uses MinIO instead). A copy on a second node would split the repository.
if [[ "${NODE_NAME}" == "node1" ]]; then
  install -d -m 0700 /srv/pgnomad/pgbackrest
  write_if_changed /etc/nomad.d/pgbackrest-repo.hcl 0640 <<'HCL' && changed=1
client {
  host_volume "pgbackrest" {
    path      = "/srv/pgnomad/pgbackrest"
    read_only = false
  }
}
HCL
elif [[ -f /etc/nomad.d/pgbackrest-repo.hcl ]]; then
  rm -f /etc/nomad.d/pgbackrest-repo.hcl
  changed=1
fi

write_if_changed /etc/systemd/system/nomad.service 0644 <<'UNIT' && changed=1
[Unit]
Description=Nomad agent
Wants=network-online.target consul.service docker.service
After=network-online.target consul.service docker.service

[Service]
ExecStart=/usr/local/bin/nomad agent -config=/etc/nomad.d
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
KillSignal=SIGINT
Restart=on-failure
RestartSec=2
LimitNOFILE=65536
LimitNPROC=infinity
TasksMax=infinity
OOMScoreAdjust=-1000

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable nomad
if ((changed)) || ! systemctl is-active --quiet nomad; then
  systemctl restart nomad
fi
wait_for 60 "nomad agent on ${NODE_NAME}" http_up "http://127.0.0.1:${NOMAD_HTTP_PORT}/v1/status/leader"

# Convenience for 'vagrant ssh': the CLI talks to the local agent with the management token.
cat <<PROFILE | write_if_changed /etc/profile.d/pgnomad-lab.sh 0644 || true
export NOMAD_ADDR=http://${NODE_IP}:${NOMAD_HTTP_PORT}
export CONSUL_HTTP_ADDR=http://127.0.0.1:${CONSUL_HTTP_PORT}
[ -r "${SECRETS_DIR}/nomad-management.token" ] && NOMAD_TOKEN=\$(cat "${SECRETS_DIR}/nomad-management.token") && export NOMAD_TOKEN
[ -r "${SECRETS_DIR}/consul-management.token" ] && CONSUL_HTTP_TOKEN=\$(cat "${SECRETS_DIR}/consul-management.token") && export CONSUL_HTTP_TOKEN
PROFILE
