cluster "main" {}

postgres {
  driver  = "exec"
  bin_dir = "/usr/pgsql-16/bin"
  version = 16
}
