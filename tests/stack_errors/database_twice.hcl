cluster "main" {}

postgres {
  database "app" {}
  database "app" {}
}
