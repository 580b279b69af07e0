cluster "clone" {}

restore {
  from   = "main"
  to_lsn = "3000060"
}
