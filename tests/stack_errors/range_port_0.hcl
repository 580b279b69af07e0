cluster "main" {}

pgbouncer {
  port = 0
}
