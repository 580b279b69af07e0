cluster "main" {
  datacentres = ["dc1"]
}
