cluster "main" {}
backup {
  repo {
    type   = "s3"
    bucket = "pg-backups"
    shared = true
  }
}
