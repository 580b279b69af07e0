cluster "main" {}

postgres {
  users = ["app", "replicator"]
}
