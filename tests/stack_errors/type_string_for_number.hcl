cluster "main" {}

postgres {
  members = "3"
}
