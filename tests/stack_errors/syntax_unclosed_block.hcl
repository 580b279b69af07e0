cluster "main" {
  namespace = "prod"
