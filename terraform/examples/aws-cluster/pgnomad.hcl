# Stack file for the cluster built by terraform/examples/aws-cluster:
#   set -a; . ./pgnomad.env; set +a
#   export NOMAD_TOKEN=$(aws ssm get-parameter --with-decryption --name "$(terraform output -raw nomad_token_ssm_parameter)" --query Parameter.Value --output text)
#   pgnomad run -f pgnomad.hcl
cluster "prod" {
  datacenters = ["dc1"]
}

postgres {
  version = 15
  members = 3
}

patroni {
  dcs           = "consul"
  ttl           = 10 # allowed because the servers' session_ttl_min is 5s (consul_session_ttl_min)
  loop_wait     = 1 # a crashed primary is noticed within loop_wait
  retry_timeout = 4
  # Patroni asks Consul for sessions of ttl/2 = 5s; Consul's default minimum is 10s.
  consul_session_ttl_min = "5s"
}

storage {
  type         = "csi"
  plugin_id    = "aws-ebs0" # the EBS CSI jobs the first server submits
  capacity_min = "10GiB"
  capacity_max = "20GiB"
}

backup {
  repo {
    type      = "s3"
    endpoint  = "https://s3.us-east-1.amazonaws.com"
    bucket    = "pgnomad-pgbackrest-123456789012" # terraform output -raw backup_bucket
    region    = "us-east-1"
    uri_style = "host"
  }
}
