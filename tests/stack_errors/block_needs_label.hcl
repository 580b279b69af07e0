cluster {
  namespace = "prod"
}
