output "nomad_addr" {
  description = "NOMAD_ADDR for pgnomad and the nomad CLI (HTTPS through the load balancer)."
  value       = "https://${aws_lb.api.dns_name}:4646"
}

output "consul_http_addr" {
  description = "CONSUL_HTTP_ADDR for the consul CLI (HTTPS through the load balancer)."
  value       = "https://${aws_lb.api.dns_name}:8501"
}

output "ca_cert_pem" {
  description = "PEM of the cluster's CA (NOMAD_CACERT / CONSUL_CACERT point at a file holding it)."
  value       = tls_self_signed_cert.ca.cert_pem
}

output "nomad_token_ssm_parameter" {
  description = "Name of the SSM SecureString parameter holding the Nomad bootstrap (management) token."
  value       = aws_ssm_parameter.secure["nomad/bootstrap-token"].name
}

output "consul_token_ssm_parameter" {
  description = "Name of the SSM SecureString parameter holding the Consul initial management token."
  value       = aws_ssm_parameter.secure["consul/management-token"].name
}

output "patroni_consul_token_ssm_parameter" {
  description = "Name of the SSM SecureString parameter holding Patroni's Consul token (policy pgnomad-patroni)."
  value       = aws_ssm_parameter.secure["consul/patroni-token"].name
}

output "server_private_ips" {
  description = "Private addresses of the servers."
  value       = aws_instance.server[*].private_ip
}

output "client_autoscaling_group_name" {
  description = "Name of the clients' autoscaling group."
  value       = aws_autoscaling_group.client.name
}

output "security_group_id" {
  description = "Security group of every agent."
  value       = aws_security_group.cluster.id
}

output "ebs_csi_plugin_id" {
  description = "CSI plugin ID of the EBS driver (the stack file's storage.plugin_id)."
  value       = var.ebs_csi_plugin_id
}

output "ebs_csi_jobspecs" {
  description = "The EBS CSI plugin jobs (HCL jobspecs by job name); the first server submits them after the ACL bootstrap."
  value       = local.ebs_csi_jobspecs
}

output "datacenter" {
  description = "Nomad and Consul datacenter."
  value       = var.datacenter
}
