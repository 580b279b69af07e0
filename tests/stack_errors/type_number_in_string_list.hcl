cluster "main" {}

postgres {
  users = ["alice", 42]
}
