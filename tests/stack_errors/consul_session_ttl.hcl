cluster "main" {}

patroni {
  ttl = 10
}
