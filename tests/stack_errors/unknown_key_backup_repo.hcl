cluster "main" {}

backup {
  repo {
    type    = "s3"
    bucket  = "pg-backups"
    regoin  = "eu-west-1"
  }
}
