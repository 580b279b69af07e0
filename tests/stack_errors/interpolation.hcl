cluster "main" {
  namespace = "${env}-pg"
}
