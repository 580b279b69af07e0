cluster "main" {}

postgres {
  port = 70000
}
