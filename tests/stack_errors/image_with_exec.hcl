cluster "main" {}

postgres {
  driver = "exec"
  image  = "postgres:16"
}
