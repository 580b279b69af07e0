cluster "main" {}

postgres {
  members          = 2
  synchronous_mode = "off"
}
