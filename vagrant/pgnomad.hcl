# Stack file for the Vagrant lab (vagrant/Vagrantfile, docs/multi-host-lab.md):
#   source vagrant/.secrets/pgnomad.env && pgnomad run -f vagrant/pgnomad.hcl
cluster "lab" {
  datacenters = ["dc1"]
}

postgres {
  version = 15
  members = 3
}

patroni {
  dcs           = "consul"
  ttl           = 10 # allowed because the lab's Consul servers lower session_ttl_min to 5s
  loop_wait     = 1 # a crashed primary is noticed within loop_wait
  retry_timeout = 4
  # Patroni asks Consul for sessions of ttl/2 = 5s; Consul's default minimum is 10s.
  consul_session_ttl_min = "5s"
}

storage {
  type         = "csi"
  plugin_id    = "hostpath" # the system job vagrant/jobs/csi-hostpath.nomad.hcl
  capacity_min = "10GiB"
  capacity_max = "20GiB"
}

backup {
  repo {
    type      = "s3"
    endpoint   = "192.168.56.11:9000" # MinIO on node1 over HTTPS (vagrant/scripts/minio.sh)
    verify_tls = false                # its certificate is self-signed
    bucket    = "pgbackrest"
    region    = "us-east-1"
    uri_style = "path"
  }
}
