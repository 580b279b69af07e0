cluster "main" {}

postgres {
  users = ["Alice", "pg_app", "bob-smith"]

  database "my-db" {
    owner = "alice"
  }
}
