cluster "main" {}

storage {
  capacity_min = "50GiB"
  capacity_max = "20GiB"
}
