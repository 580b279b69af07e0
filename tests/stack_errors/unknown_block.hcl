cluster "main" {}

pgbouncr {
  count = 2
}
