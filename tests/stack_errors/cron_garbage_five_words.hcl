cluster "main" {}

backup {
  schedule {
    full = "every sunday at one o'clock"
  }
}
