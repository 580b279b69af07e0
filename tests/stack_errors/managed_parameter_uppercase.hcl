cluster "main" {}

postgres {
  parameters = {
    Archive_Mode = "off"
  }
}
