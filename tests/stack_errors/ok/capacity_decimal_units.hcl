cluster "main" {}

storage {
  capacity_min = "10GB"
  capacity_max = "1TB"
}
