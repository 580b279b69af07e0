cluster "1main" {}
