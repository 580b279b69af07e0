cluster "main" {}

postgres {
  port = 5432
}

patroni {
  port = 5432
}
