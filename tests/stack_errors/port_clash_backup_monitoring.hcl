cluster "main" {}

backup {
  tls_port = 9187
}
