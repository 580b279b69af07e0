cluster "main" {}

pgbouncer {
  count = -2
}
