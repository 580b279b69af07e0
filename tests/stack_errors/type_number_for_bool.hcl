cluster "main" {}

pgbouncer {
  enabled = 1
}
