cluster "pg_main" {}
