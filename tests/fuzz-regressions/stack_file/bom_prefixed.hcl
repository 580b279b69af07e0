cluster "main" {}
