cluster "main" {}

patroni {
  ttl = 30.5
}
