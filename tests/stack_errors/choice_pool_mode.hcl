cluster "main" {}

pgbouncer {
  pool_mode = "transation"
}
