cluster "Main" {}
