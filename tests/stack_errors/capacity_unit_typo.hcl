cluster "main" {}

storage {
  capacity_min = "10 gigs"
}
