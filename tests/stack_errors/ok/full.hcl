cluster "main" {
  datacenters = ["dc1", "dc2"]
  namespace   = "databases"

  constraint "$${attr.kernel.name}" {
    value = "linux"
  }
}

postgres {
  version = 16
  members = 3
  users   = ["reporting"]

  parameters = {
    shared_buffers = "1GB"
    work_mem       = 16
  }

  database "shop" {
    owner = "shop"
  }
}

storage {
  plugin_id = "aws-ebs0"
}

backup {
  repo {
    type   = "s3"
    bucket = "pg-backups.example"
  }
}
