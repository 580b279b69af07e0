cluster "main" {}

storage {
  type      = "host"
  plugin_id = "hostpath"
}
