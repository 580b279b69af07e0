cluster "main" {}

backup {
  schedule {
    full = "30 2 * * SUN"
    diff = "0 3 * * 1-6"
    incr = "@hourly"
  }
}
