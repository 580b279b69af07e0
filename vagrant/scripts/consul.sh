#!/usr/bin/env bash
# Consul server agent on every node (a server is also the node's local agent: Patroni talks to
# it at <node ip>:8500). Three servers form the quorum. Idempotent: restarts only on change.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env NODE_NAME NODE_IP SERVER_IPS

changed=0
write_if_changed /etc/consul.d/consul.hcl 0640 <<HCL && changed=1
# Managed by vagrant/scripts/consul.sh
datacenter       = "${DATACENTER}"
node_name        = "${NODE_NAME}"
data_dir         = "/opt/consul"
bind_addr        = "${NODE_IP}"
advertise_addr   = "${NODE_IP}"
# Containers (bridge networking) reach the agent at the node's address.
client_addr      = "0.0.0.0"
server           = true
bootstrap_expect = 3
retry_join       = [$(hcl_list "$SERVER_IPS")]
encrypt          = "$(secret consul-gossip.key)"

ports {
  http = ${CONSUL_HTTP_PORT}
  dns  = ${CONSUL_DNS_PORT}
  grpc = 8502
}

ui_config {
  enabled = true
}

# Patroni's Consul DCS creates its session with a TTL of ttl/2 seconds, and Consul refuses
# sessions shorter than session_ttl_min, whose default is 10s: with the default, a Patroni ttl
# below 20 would be refused. The lab lowers it to 5s so that ttl = 10 (fast failover) works.
session_ttl_min = "5s"

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  tokens {
    # Created by the servers at the first leader election.
    initial_management = "$(secret consul-management.token)"
    # Created by scripts/bootstrap.sh; the agent retries until it exists.
    agent = "$(secret consul-agent.token)"
    dns   = "$(secret consul-dns.token)"
  }
}
HCL
chown -R root:root /etc/consul.d

write_if_changed /etc/systemd/system/consul.service 0644 <<'UNIT' && changed=1
[Unit]
Description=Consul agent
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/consul agent -config-dir=/etc/consul.d
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
KillSignal=SIGTERM
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT

/usr/local/bin/consul validate /etc/consul.d >/dev/null
systemctl daemon-reload
systemctl enable consul
if ((changed)) || ! systemctl is-active --quiet consul; then
  systemctl restart consul
fi
wait_for 60 "consul agent on ${NODE_NAME}" http_up "http://127.0.0.1:${CONSUL_HTTP_PORT}/v1/status/leader"
