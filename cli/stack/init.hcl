# pgnomad stack file: one highly available PostgreSQL cluster on Nomad + Consul.
# Every setting below shows its default; delete what you do not change.
# `cluster "main" {}` alone is a working three-member cluster.

cluster "main" {
  datacenters = ["dc1"]
  namespace   = "default"
  region      = "global"
  node_pool   = "default"
  max_kill_timeout = 30  # seconds: your Nomad clients' client.max_kill_timeout
  # constraint "attr.kernel.name" { operator = "=" value = "linux" }   # a Nomad node attribute
}

postgres {
  version = 15       # 13 to 17
  members = 3        # one Nomad task group (member-0 …) and one volume each
  driver  = "docker" # or "exec" with packages on the hosts (bin_dir)
  # image = "pgnomad/postgres:15"
  uid     = 999      # numeric uid/gid of the postgres user (the image's; with exec drivers the hosts')
  gid     = 999      #   Nomad writes the config and secret files owned by them, mode 0600
  cpu     = 1000     # MHz
  memory  = 1024     # MB
  port    = 5432
  synchronous_mode = "on" # "off", "on" or "strict"
  tls              = false # offer TLS to clients, with a certificate from pgnomad's CA

  parameters = {
    # shared_buffers = "1GB"
  }
  pg_hba = [
    # "hostssl all all 10.0.0.0/8 scram-sha-256",
  ]
  users = ["app"]
  database "app" {
    owner = "app"
  }

  placement {
    distinct_hosts = true
    # spread = "node.datacenter"   # spread members over this node attribute
  }
}

patroni {
  dcs                   = "consul" # or "etcd3" with etcd_hosts = ["10.0.0.1:2379"]
  ttl                   = 20       # Consul: ttl/2 must reach the servers' session_ttl_min
  loop_wait             = 1        # how soon a crashed primary is noticed; loop_wait + 2 × retry_timeout ≤ ttl
  retry_timeout         = 4
  primary_start_timeout = 0        # 0: fail over when Postgres crashes, do not restart in place
  consul_session_ttl_min = "10s"   # what your Consul servers are configured with
  port                  = 8008
  kill_timeout          = 30       # seconds after SIGTERM (stop Postgres, hand over the leader key)
  tags = {
    # nofailover = true
  }
}

storage {
  type         = "csi"      # or "host" with volume_prefix = "main-member-"
  plugin_id    = "hostpath"
  capacity_min = "10GiB"
  capacity_max = "20GiB"
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
  fs_type         = "ext4"
  mount_flags     = ["noatime"]
}

pgbouncer {
  enabled            = true
  count              = 2
  port               = 6432
  pool_mode          = "transaction"
  default_pool_size  = 20
  max_client_conn    = 1000
  query_wait_timeout = 120 # seconds; must outlast a failover
  server_login_retry = "250ms" # after a failed login; part of every failover's write gap
  max_pause          = "90s" # a PAUSE no one lifts is RESUMEd after this; 0 turns it off
  tls                = false # offer TLS to clients, with a certificate from pgnomad's CA
}

pgadmin {
  enabled = true
  port    = 5050
  email   = "admin@example.com"
}

backup {
  enabled        = true
  cipher         = true
  retention_full = 2
  retention_diff = 7
  time_zone      = "UTC"
  wal_archiving  = true
  from_standby   = true

  # A host volume on ONE node: the repository host job (main-repo, pgBackRest's TLS server,
  # to which members push WAL) and the backup jobs run there; members do not mount it.
  # shared = true: storage that is the same on every node (NFS, a multi-writer CSI volume),
  # mounted by every member, without a repository host.
  repo {
    type        = "volume" # or "s3" with endpoint, bucket, region, path, uri_style
    volume_type = "host"   # "csi" only with shared = true
    source      = "pgbackrest"  # a host volume on one node only
    path        = "/var/lib/pgbackrest"
    shared      = false
  }

  schedule {
    full = "0 1 * * 0"   # cron, or "off"
    diff = "0 1 * * 1-6"
    incr = "0 */4 * * *"
  }
}

monitoring {
  postgres_exporter = true
  port              = 9187
}

secrets {
  provider = "nomad-variables" # or "vault" with vault_mount, vault_path_prefix, vault_role
}
