cluster "main" {}

patroni {
  dcs        = "etcd3"
  etcd_hosts = ["10.0.0.1:2379", "etcd-2.internal:2379"]
}
