cluster "main" {}

postgres {
  members = 100
}
