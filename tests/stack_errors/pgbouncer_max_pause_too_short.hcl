cluster "main" {}

pgbouncer {
  max_pause = "5s"
}
