cluster "main" {}
backup {
  repo {
    volume_type = "csi"
    source      = "main-pgbackrest"
  }
}
