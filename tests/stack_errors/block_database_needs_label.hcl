cluster "main" {}

postgres {
  database {
    owner = "app"
  }
}
