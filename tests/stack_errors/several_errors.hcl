cluster "main" {}

postgres {
  members  = "three"
  verison  = 16
}

pgbouncer {
  pool_mode = "sessions"
}
