cluster "main" {}

pgadmin {
  email = lower("ADMIN@EXAMPLE.COM")
}
