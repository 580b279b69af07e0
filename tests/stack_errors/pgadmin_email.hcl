cluster "main" {}

pgadmin {
  email = "admin"
}
