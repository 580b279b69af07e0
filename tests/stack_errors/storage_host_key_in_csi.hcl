cluster "main" {}

storage {
  type          = "csi"
  volume_prefix = "pg-"
}
