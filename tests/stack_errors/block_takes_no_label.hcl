cluster "main" {}

postgres "main" {
  members = 3
}
