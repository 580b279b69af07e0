#!/usr/bin/env bash
# Packages from Debian (Docker, CNI plugins, tools) and the pinned Nomad and Consul releases,
# verified against the SHA256 in versions.env. Idempotent: a binary already at the pinned
# version is left alone.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export DEBIAN_FRONTEND=noninteractive

PACKAGES=(ca-certificates curl unzip jq docker.io containernetworking-plugins awscli)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
systemctl enable --now docker

# install_hashicorp NAME VERSION SHA256: /usr/local/bin/NAME from releases.hashicorp.com.
install_hashicorp() {
  local name="$1" version="$2" sha="$3" zip tmp
  if [[ -x "/usr/local/bin/$name" ]] && "/usr/local/bin/$name" version | head -n1 | grep -q "v${version}\$"; then
    log "$name $version already installed"
    return 0
  fi
  zip="${name}_${version}_linux_amd64.zip"
  tmp="$(mktemp -d)"
  log "downloading $zip"
  curl -fsSL --retry 3 -o "$tmp/$zip" "https://releases.hashicorp.com/${name}/${version}/${zip}"
  echo "${sha}  $tmp/$zip" | sha256sum --check --strict --quiet ||
    die "$zip does not match the pinned SHA256 $sha"
  unzip -o -q "$tmp/$zip" "$name" -d "$tmp"
  install -m 0755 "$tmp/$name" "/usr/local/bin/$name"
  rm -rf "$tmp"
  log "installed $name $version"
}

install_hashicorp nomad "$NOMAD_VERSION" "$NOMAD_SHA256"
install_hashicorp consul "$CONSUL_VERSION" "$CONSUL_SHA256"

# Bridge networking (Nomad's `network { mode = "bridge" }`) needs br_netfilter.
printf 'br_netfilter\n' | write_if_changed /etc/modules-load.d/nomad-bridge.conf 0644 || true
modprobe br_netfilter
cat <<'SYSCTL' | write_if_changed /etc/sysctl.d/60-nomad-bridge.conf 0644 || true
net.bridge.bridge-nf-call-arptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.bridge.bridge-nf-call-iptables = 1
SYSCTL
sysctl --quiet --system

install -d -m 0700 /opt/consul /opt/nomad
install -d -m 0755 /etc/consul.d /etc/nomad.d /var/lib/csi-hostpath
