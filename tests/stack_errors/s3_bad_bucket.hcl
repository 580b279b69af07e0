cluster "main" {}

backup {
  repo {
    type   = "s3"
    bucket = "My_Backups"
  }
}
