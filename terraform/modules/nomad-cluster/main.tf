data "aws_region" "current" {}

data "aws_ami" "debian12" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian's official AMI account

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  ami_id     = var.ami_id != null ? var.ami_id : data.aws_ami.debian12[0].id
  ssm_prefix = "/pgnomad/${var.name}"
  # Cloud auto-join: servers carry this tag; Consul and Nomad find each other by it.
  join_tag_key = "pgnomad-server"
  retry_join   = "provider=aws tag_key=${local.join_tag_key} tag_value=${var.name}"

  # The EBS CSI plugin as two Nomad jobs (controllers as a service, nodes as a system job).
  ebs_csi_jobspecs = {
    for kind in ["controller", "node"] : "aws-ebs-csi-${kind}" => templatefile("${path.module}/templates/aws-ebs-csi.nomad.hcl.tftpl", {
      kind       = kind
      plugin_id  = var.ebs_csi_plugin_id
      image      = var.ebs_csi_image
      datacenter = var.datacenter
      node_pool  = var.node_pool
    })
  }

  user_data_common = {
    name                   = var.name
    datacenter             = var.datacenter
    nomad_region           = var.nomad_region
    node_pool              = var.node_pool
    nomad_version          = var.nomad_version
    nomad_sha256           = var.nomad_sha256
    consul_version         = var.consul_version
    consul_sha256          = var.consul_sha256
    consul_session_ttl_min = var.consul_session_ttl_min
    server_count           = var.server_count
    retry_join             = local.retry_join
    ssm_prefix             = local.ssm_prefix
    aws_region             = data.aws_region.current.name
    ebs_csi_jobspecs       = local.ebs_csi_jobspecs
  }
}

# --- Secrets: generated here, stored in SSM, read by the instances at boot -------------------

resource "random_uuid" "consul_management" {}
resource "random_uuid" "consul_agent" {}
resource "random_uuid" "consul_nomad" {}
# Patroni's Consul DCS token (PGNOMAD_PATRONI_CONSUL_TOKEN for `pgnomad run`).
resource "random_uuid" "consul_patroni" {}
resource "random_uuid" "nomad_bootstrap" {}

resource "random_id" "consul_gossip" {
  byte_length = 32
}

resource "random_id" "nomad_gossip" {
  byte_length = 32
}

locals {
  secure_parameters = {
    "consul/management-token" = random_uuid.consul_management.result
    "consul/agent-token"      = random_uuid.consul_agent.result
    "consul/nomad-token"      = random_uuid.consul_nomad.result
    "consul/patroni-token"    = random_uuid.consul_patroni.result
    "consul/gossip-key"       = random_id.consul_gossip.b64_std
    "nomad/bootstrap-token"   = random_uuid.nomad_bootstrap.result
    "nomad/gossip-key"        = random_id.nomad_gossip.b64_std
    "tls/server-key"          = tls_private_key.server.private_key_pem
    "tls/client-key"          = tls_private_key.client.private_key_pem
  }
  plain_parameters = {
    "tls/ca"     = tls_self_signed_cert.ca.cert_pem
    "tls/server" = tls_locally_signed_cert.server.cert_pem
    "tls/client" = tls_locally_signed_cert.client.cert_pem
  }
}

resource "aws_ssm_parameter" "secure" {
  for_each = local.secure_parameters
  name     = "${local.ssm_prefix}/${each.key}"
  type     = "SecureString"
  value    = each.value
  tags     = var.tags
}

resource "aws_ssm_parameter" "plain" {
  for_each = local.plain_parameters
  name     = "${local.ssm_prefix}/${each.key}"
  type     = "String"
  value    = each.value
  tags     = var.tags
}

# --- API load balancer (TLS passes through to the agents) -----------------------------------

resource "aws_lb" "api" {
  name               = "${var.name}-api"
  load_balancer_type = "network"
  internal           = !var.public_api
  subnets            = var.public_api ? var.public_subnet_ids : var.private_subnet_ids
  tags               = var.tags
}

resource "aws_lb_target_group" "api" {
  for_each    = { nomad = 4646, consul = 8501 }
  name        = "${var.name}-${each.key}"
  port        = each.value
  protocol    = "TCP"
  vpc_id      = var.vpc_id
  target_type = "instance"

  health_check {
    protocol = "TCP"
    port     = tostring(each.value)
  }

  tags = var.tags
}

resource "aws_lb_listener" "api" {
  for_each          = aws_lb_target_group.api
  load_balancer_arn = aws_lb.api.arn
  port              = each.value.port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = each.value.arn
  }
}

resource "aws_lb_target_group_attachment" "api" {
  for_each = {
    for pair in setproduct(keys(aws_lb_target_group.api), range(var.server_count)) :
    "${pair[0]}-${pair[1]}" => { group = pair[0], index = pair[1] }
  }
  target_group_arn = aws_lb_target_group.api[each.value.group].arn
  target_id        = aws_instance.server[each.value.index].id
  port             = aws_lb_target_group.api[each.value.group].port
}

# --- Servers -------------------------------------------------------------------------------

resource "aws_instance" "server" {
  count                  = var.server_count
  ami                    = local.ami_id
  instance_type          = var.server_instance_type
  subnet_id              = var.private_subnet_ids[count.index % length(var.private_subnet_ids)]
  vpc_security_group_ids = [aws_security_group.cluster.id]
  iam_instance_profile   = aws_iam_instance_profile.node.name
  key_name               = var.key_name

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", merge(local.user_data_common, {
    role      = "server"
    bootstrap = count.index == 0
  }))
  user_data_replace_on_change = false

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_size = var.root_volume_size
    volume_type = "gp3"
    encrypted   = true
  }

  tags = merge(var.tags, {
    Name                 = "${var.name}-server-${count.index}"
    (local.join_tag_key) = var.name
  })

  depends_on = [aws_ssm_parameter.secure, aws_ssm_parameter.plain, aws_iam_role_policy.node]
}

# --- Clients -------------------------------------------------------------------------------

resource "aws_launch_template" "client" {
  name_prefix            = "${var.name}-client-"
  image_id               = local.ami_id
  instance_type          = var.client_instance_type
  key_name               = var.key_name
  vpc_security_group_ids = [aws_security_group.cluster.id]

  user_data = base64encode(templatefile("${path.module}/templates/user-data.sh.tftpl", merge(local.user_data_common, {
    role      = "client"
    bootstrap = false
  })))

  iam_instance_profile {
    name = aws_iam_instance_profile.node.name
  }

  # The EBS CSI node plugin runs in a container: IMDSv2 needs a hop limit of 2.
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = var.root_volume_size
      volume_type = "gp3"
      encrypted   = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-client" })
  }

  tags = var.tags
}

resource "aws_autoscaling_group" "client" {
  name_prefix         = "${var.name}-client-"
  min_size            = var.client_min_size
  max_size            = max(var.client_max_size, var.client_min_size)
  desired_capacity    = coalesce(var.client_desired_capacity, var.client_min_size)
  vpc_zone_identifier = var.private_subnet_ids
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.client.id
    version = aws_launch_template.client.latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      # One client at a time: a Postgres member moves, Patroni keeps the others serving.
      min_healthy_percentage = 66
    }
  }

  dynamic "tag" {
    for_each = merge(var.tags, { "pgnomad-cluster" = var.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  depends_on = [aws_instance.server]
}
