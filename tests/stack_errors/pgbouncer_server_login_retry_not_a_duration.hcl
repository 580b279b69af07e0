cluster "main" {}

pgbouncer {
  server_login_retry = "0.5s"
}
