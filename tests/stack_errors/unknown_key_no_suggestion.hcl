cluster "main" {}

monitoring {
  grafana = true
}
