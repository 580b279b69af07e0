cluster "main" {}

patroni {
  etcd_hosts = ["10.0.0.1:2379"]
}
