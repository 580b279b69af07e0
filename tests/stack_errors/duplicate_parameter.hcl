cluster "main" {}

postgres {
  parameters = {
    work_mem = "8MB"
    work_mem = "16MB"
  }
}
