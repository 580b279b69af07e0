cluster "main" {}

patroni {
  ttl           = 30
  loop_wait     = 10
  retry_timeout = 15
}
