output "nomad_addr" {
  description = "NOMAD_ADDR for pgnomad."
  value       = module.cluster.nomad_addr
}

output "consul_http_addr" {
  description = "CONSUL_HTTP_ADDR for pgnomad."
  value       = module.cluster.consul_http_addr
}

output "ca_cert_file" {
  description = "NOMAD_CACERT / CONSUL_CACERT: the cluster CA written next to this configuration."
  value       = abspath(local_file.ca.filename)
}

output "nomad_token_ssm_parameter" {
  description = "SSM SecureString parameter holding the Nomad management token (NOMAD_TOKEN)."
  value       = module.cluster.nomad_token_ssm_parameter
}

output "consul_token_ssm_parameter" {
  description = "SSM SecureString parameter holding the Consul management token (CONSUL_HTTP_TOKEN)."
  value       = module.cluster.consul_token_ssm_parameter
}

output "patroni_consul_token_ssm_parameter" {
  description = "SSM SecureString parameter holding Patroni's Consul token (PGNOMAD_PATRONI_CONSUL_TOKEN)."
  value       = module.cluster.patroni_consul_token_ssm_parameter
}

output "pgnomad_env_file" {
  description = "The environment file for pgnomad."
  value       = abspath(local_file.pgnomad_env.filename)
}

output "backup_bucket" {
  description = "S3 bucket for pgBackRest (backup.repo.bucket in pgnomad.hcl)."
  value       = aws_s3_bucket.backups.bucket
}

output "csi_plugin_id" {
  description = "storage.plugin_id for pgnomad.hcl."
  value       = module.cluster.ebs_csi_plugin_id
}
