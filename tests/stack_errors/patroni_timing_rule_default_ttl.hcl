cluster "main" {}

patroni {
  retry_timeout = 10
}
