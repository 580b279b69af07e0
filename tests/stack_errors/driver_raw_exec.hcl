cluster "main" {}

postgres {
  driver = "raw_exec"
}
