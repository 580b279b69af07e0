# The defaults of pgnomad's stack file (cli/stack/defaults.rs), stated for Terraform.
# tests/infra_defaults.rs checks that these values equal the Rust constants.
locals {
  datacenter = "dc1"
  region     = "global"
  namespace  = "default"
  node_pool  = "default"

  csi_plugin_id         = "hostpath"
  aws_ebs_csi_plugin_id = "aws-ebs0"

  ports = {
    postgres       = 5432
    patroni        = 8008
    pgbouncer      = 6432
    pgadmin        = 5050
    exporter       = 9187
    pgbackrest_tls = 8432
    consul_http    = 8500
  }

  postgres_image_repo = "pgnomad/postgres"
  postgres_image      = "${local.postgres_image_repo}:${var.postgres_version}"
  pgadmin_image       = "dpage/pgadmin4:8"

  # Patroni asks Consul for sessions of ttl/2 seconds; Consul refuses sessions shorter than
  # session_ttl_min, 10s by default, so a Patroni ttl below 20 needs the servers lowered to 5s.
  consul_session_ttl_min_default_secs = 10
  consul_session_ttl_min_lab_secs     = 5
  consul_session_ttl_min_secs         = var.lab ? local.consul_session_ttl_min_lab_secs : local.consul_session_ttl_min_default_secs
  patroni_min_ttl_secs                = 2 * local.consul_session_ttl_min_secs

  # Pinned releases (kept equal to vagrant/scripts/versions.env); SHA256 of the linux_amd64 zip.
  nomad_version  = "1.9.7"
  nomad_sha256   = "e9c7337893eceb549557ef9ad341b3ae64f5f43e29ff1fb167b70cfd16748d2d"
  consul_version = "1.20.5"
  consul_sha256  = "75132816072b3c7da86f04153fc58fcfcf39abadee5279b3f72bec3cce01a16b"
}
