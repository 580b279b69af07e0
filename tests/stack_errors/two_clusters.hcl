cluster "main" {}

cluster "second" {}
