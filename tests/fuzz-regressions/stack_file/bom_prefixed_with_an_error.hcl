cluster "main" {}
postgres {
  memebers = 3
}
