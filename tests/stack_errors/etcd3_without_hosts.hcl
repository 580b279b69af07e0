cluster "main" {}

patroni {
  dcs = "etcd3"
}
