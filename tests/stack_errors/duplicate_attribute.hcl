cluster "main" {}

postgres {
  members = 3
  members = 5
}
