cluster "main" {}

postgres {
  bin_dir = "/usr/lib/postgresql/16/bin"
}
