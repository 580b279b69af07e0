cluster "main" {}

postgres {
  users = ["postgres"]
}
