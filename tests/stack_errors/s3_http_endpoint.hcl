cluster "main" {}
backup {
  repo {
    type     = "s3"
    endpoint = "http://minio.service.consul:9000"
    bucket   = "pg-backups"
  }
}
