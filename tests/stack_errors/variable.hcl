cluster "main" {}

postgres {
  members = var.members
}
