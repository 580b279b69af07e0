cluster "main" {}
backup {
  repo {
    type        = "volume"
    volume_type = "csi"
    source      = "main-pgbackrest"
    shared      = true
  }
}
