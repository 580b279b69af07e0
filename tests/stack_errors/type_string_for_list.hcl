cluster "main" {
  datacenters = "dc1"
}
