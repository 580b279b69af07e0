output "datacenter" {
  description = "Nomad datacenter (and Consul datacenter) the jobs run in."
  value       = local.datacenter
}

output "region" {
  description = "Nomad region."
  value       = local.region
}

output "namespace" {
  description = "Nomad namespace."
  value       = local.namespace
}

output "node_pool" {
  description = "Nomad node pool."
  value       = local.node_pool
}

output "csi_plugin_id" {
  description = "CSI plugin ID of the lab (hostpath driver)."
  value       = local.csi_plugin_id
}

output "aws_ebs_csi_plugin_id" {
  description = "CSI plugin ID of the AWS EBS driver."
  value       = local.aws_ebs_csi_plugin_id
}

output "ports" {
  description = "Ports of the stack's services, by name."
  value       = local.ports
}

output "postgres_image" {
  description = "Postgres + Patroni image (built from packs/image/Dockerfile), tagged with the major version."
  value       = local.postgres_image
}

output "pgadmin_image" {
  description = "pgAdmin image."
  value       = local.pgadmin_image
}

output "consul_session_ttl_min" {
  description = "session_ttl_min for the Consul servers, as a Consul duration string."
  value       = "${local.consul_session_ttl_min_secs}s"
}

output "patroni_min_ttl" {
  description = "Smallest Patroni ttl (seconds) the Consul servers accept (twice session_ttl_min)."
  value       = local.patroni_min_ttl_secs
}

output "nomad_release" {
  description = "Pinned Nomad release: version and SHA256 of nomad_<version>_linux_amd64.zip."
  value       = { version = local.nomad_version, sha256 = local.nomad_sha256 }
}

output "consul_release" {
  description = "Pinned Consul release: version and SHA256 of consul_<version>_linux_amd64.zip."
  value       = { version = local.consul_version, sha256 = local.consul_sha256 }
}
