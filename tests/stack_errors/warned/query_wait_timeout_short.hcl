cluster "main" {}

pgbouncer {
  query_wait_timeout = 15
}
