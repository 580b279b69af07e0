cluster "main" {}

postgres {
  members = 2
}
