cluster "main" {}

backup {
  repo {
    type = "s3"
  }
}
