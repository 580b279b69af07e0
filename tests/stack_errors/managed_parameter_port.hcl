cluster "main" {}

postgres {
  parameters = {
    shared_buffers = "1GB"
    port           = 5433
  }
}
