cluster "main" {}

backup {
  schedule {
    full = "0 1 * *"
  }
}
