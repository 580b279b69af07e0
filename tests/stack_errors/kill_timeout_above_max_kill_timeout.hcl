cluster "main" {}

patroni {
  kill_timeout = 90
}
