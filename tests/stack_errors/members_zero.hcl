cluster "main" {}

postgres {
  members = 0
}
