cluster "main" {}

postgres {
  users = ["app", "reporting", "app"]
}
