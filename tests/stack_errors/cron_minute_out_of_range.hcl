cluster "main" {}

backup {
  schedule {
    incr = "61 */4 * * *"
  }
}
