cluster "clone" {}

restore {
  from    = "main"
  to_time = "2026-12-01 10:42:07"
}
