cluster "main" {}

postgres {
  version = 12
}
