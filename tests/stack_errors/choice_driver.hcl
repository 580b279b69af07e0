cluster "main" {}

postgres {
  driver = "dockr"
}
