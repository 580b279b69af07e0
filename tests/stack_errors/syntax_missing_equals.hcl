cluster "main" {
  namespace "prod"
}
