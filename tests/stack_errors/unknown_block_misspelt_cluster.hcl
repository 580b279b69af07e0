clustre "main" {}
