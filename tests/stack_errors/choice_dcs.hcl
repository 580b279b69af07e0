cluster "main" {}

patroni {
  dcs = "consull"
}
