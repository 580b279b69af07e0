cluster "main" {
  datacenters = []
}
