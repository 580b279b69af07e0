#!/usr/bin/env bash
# Consul DNS forwarding with systemd-resolved: queries for *.consul go to the local agent's DNS
# port (8600), everything else to the upstream resolvers. Idempotent.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export DEBIAN_FRONTEND=noninteractive
if ! dpkg-query -W -f='${Status}' systemd-resolved 2>/dev/null | grep -q 'install ok installed'; then
  # Debian 12 ships systemd-resolved as its own package; installing it points
  # /etc/resolv.conf at the stub resolver (127.0.0.53) and takes DHCP's DNS servers.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends systemd-resolved
fi

changed=0
write_if_changed /etc/systemd/resolved.conf.d/consul.conf 0644 <<CONF && changed=1
# Managed by vagrant/scripts/dns.sh
[Resolve]
DNS=127.0.0.1:${CONSUL_DNS_PORT}
DNSSEC=false
Domains=~consul
CONF
systemctl enable systemd-resolved
if ((changed)) || ! systemctl is-active --quiet systemd-resolved; then
  systemctl restart systemd-resolved
fi
# consul.service.consul answers once the Consul servers have a leader (it may not have one
# yet while the other VMs are still booting, so this only reports).
if resolvectl query --legend=no consul.service.consul >/dev/null 2>&1; then
  log "consul.service.consul resolves"
else
  log "consul.service.consul does not resolve yet (normal until all three servers are up)"
fi
