cluster "main" {}

postgres {
  image = null
}
