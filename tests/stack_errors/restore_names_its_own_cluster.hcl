cluster "main" {}

restore {
  from    = "main"
  to_time = "2026-12-01T10:42:07Z"
}
