postgres {
  members = 3
}
