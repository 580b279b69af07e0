# Renders terraform/modules/nomad-cluster's templates with sample values, offline (templatefile
# needs no provider), so that .ci/infra-checks can shellcheck the user-data a real instance runs.
variable "module_dir" {
  description = "Path of terraform/modules/nomad-cluster."
  type        = string
}

locals {
  jobspecs = {
    for kind in ["controller", "node"] : "aws-ebs-csi-${kind}" => templatefile("${var.module_dir}/templates/aws-ebs-csi.nomad.hcl.tftpl", {
      kind       = kind
      plugin_id  = "aws-ebs0"
      image      = "public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver:v1.28.0"
      datacenter = "dc1"
      node_pool  = "default"
    })
  }
  common = {
    name                   = "ci"
    datacenter             = "dc1"
    nomad_region           = "global"
    node_pool              = "default"
    nomad_version          = "1.9.7"
    nomad_sha256           = "e9c7337893eceb549557ef9ad341b3ae64f5f43e29ff1fb167b70cfd16748d2d"
    consul_version         = "1.20.5"
    consul_sha256          = "75132816072b3c7da86f04153fc58fcfcf39abadee5279b3f72bec3cce01a16b"
    consul_session_ttl_min = "5s"
    server_count           = 3
    retry_join             = "provider=aws tag_key=pgnomad-server tag_value=ci"
    ssm_prefix             = "/pgnomad/ci"
    aws_region             = "us-east-1"
    ebs_csi_jobspecs       = local.jobspecs
  }
}

output "server_bootstrap" {
  value = templatefile("${var.module_dir}/templates/user-data.sh.tftpl", merge(local.common, { role = "server", bootstrap = true }))
}

output "server" {
  value = templatefile("${var.module_dir}/templates/user-data.sh.tftpl", merge(local.common, { role = "server", bootstrap = false }))
}

output "client" {
  value = templatefile("${var.module_dir}/templates/user-data.sh.tftpl", merge(local.common, { role = "client", bootstrap = false }))
}
