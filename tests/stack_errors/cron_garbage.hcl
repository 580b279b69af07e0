cluster "main" {}

backup {
  schedule {
    diff = "every day at one"
  }
}
