provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      project = "pgnomad"
      cluster = var.name
    }
  }
}

data "aws_caller_identity" "current" {}

# pgnomad's defaults (datacenter, node pool, CSI plugin ID, pinned releases, session_ttl_min).
module "defaults" {
  source           = "../../modules/pgnomad-defaults"
  postgres_version = var.postgres_version
  lab              = true
}

module "network" {
  source   = "../../modules/network"
  name     = var.name
  az_count = 3
}

# The pgBackRest repository (backup.repo in pgnomad.hcl).
resource "aws_s3_bucket" "backups" {
  bucket = "${var.name}-pgbackrest-${data.aws_caller_identity.current.account_id}"
}

resource "aws_s3_bucket_public_access_block" "backups" {
  bucket                  = aws_s3_bucket.backups.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

module "cluster" {
  source             = "../../modules/nomad-cluster"
  name               = var.name
  vpc_id             = module.network.vpc_id
  vpc_cidr_block     = module.network.vpc_cidr_block
  private_subnet_ids = module.network.private_subnet_ids
  public_subnet_ids  = module.network.public_subnet_ids
  allowed_api_cidrs  = var.allowed_api_cidrs
  backup_bucket_arns = [aws_s3_bucket.backups.arn]

  datacenter             = module.defaults.datacenter
  nomad_region           = module.defaults.region
  node_pool              = module.defaults.node_pool
  ebs_csi_plugin_id      = module.defaults.aws_ebs_csi_plugin_id
  consul_session_ttl_min = module.defaults.consul_session_ttl_min
  nomad_version          = module.defaults.nomad_release.version
  nomad_sha256           = module.defaults.nomad_release.sha256
  consul_version         = module.defaults.consul_release.version
  consul_sha256          = module.defaults.consul_release.sha256
}

# What pgnomad needs on the operator's machine.
resource "local_file" "ca" {
  filename        = "${path.module}/ca.pem"
  content         = module.cluster.ca_cert_pem
  file_permission = "0644"
}

resource "local_file" "pgnomad_env" {
  filename        = "${path.module}/pgnomad.env"
  file_permission = "0600"
  content         = <<-ENV
    # Written by terraform/examples/aws-cluster. Load with: set -a; . ./pgnomad.env; set +a
    NOMAD_ADDR=${module.cluster.nomad_addr}
    NOMAD_CACERT=${abspath(local_file.ca.filename)}
    CONSUL_HTTP_ADDR=${module.cluster.consul_http_addr}
    CONSUL_CACERT=${abspath(local_file.ca.filename)}
    # The tokens stay in SSM; fetch them into the environment with:
    #   NOMAD_TOKEN=$(aws ssm get-parameter --region ${var.aws_region} --with-decryption --name ${module.cluster.nomad_token_ssm_parameter} --query Parameter.Value --output text)
    #   CONSUL_HTTP_TOKEN=$(aws ssm get-parameter --region ${var.aws_region} --with-decryption --name ${module.cluster.consul_token_ssm_parameter} --query Parameter.Value --output text)
  ENV
}
