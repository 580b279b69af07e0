cluster "main" {}
backup {
  repo {
    source = "pgbackrest-nfs"
    shared = true
  }
}
