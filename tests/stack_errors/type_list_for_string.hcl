cluster "main" {
  namespace = ["prod"]
}
