cluster "main" {}

postgres {
  database "template1" {}
}
