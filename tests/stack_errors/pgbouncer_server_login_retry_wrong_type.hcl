cluster "main" {}

pgbouncer {
  server_login_retry = true
}
