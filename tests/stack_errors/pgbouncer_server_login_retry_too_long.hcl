cluster "main" {}

pgbouncer {
  server_login_retry = "2h"
}
