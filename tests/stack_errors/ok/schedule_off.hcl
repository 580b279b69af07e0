cluster "main" {}

backup {
  schedule {
    diff = "off"
    incr = "off"
  }
}
