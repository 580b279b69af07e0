cluster "main" {}
backup {
  repo {
    type     = "s3"
    endpoint = "minio:x"
    bucket   = "pg-backups"
  }
}
