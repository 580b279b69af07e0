cluster "main-" {}
