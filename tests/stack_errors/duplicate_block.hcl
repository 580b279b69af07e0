cluster "main" {}

postgres {
  members = 3
}

postgres {
  version = 16
}
