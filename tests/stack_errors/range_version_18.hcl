cluster "main" {}

postgres {
  version = 18
}
