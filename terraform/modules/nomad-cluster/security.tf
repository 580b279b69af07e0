resource "aws_security_group" "cluster" {
  name        = "${var.name}-cluster"
  description = "Nomad and Consul agents of ${var.name}"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-cluster" })
}

# Everything between the cluster's own instances: Consul (8300-8302 RPC/serf, 8500 HTTP,
# 8600 DNS), Nomad (4646-4648), and the dynamic ports Nomad maps for Postgres (5432),
# Patroni (8008), PgBouncer (6432), pgBackRest TLS (8432) and the exporter (9187).
resource "aws_vpc_security_group_ingress_rule" "self" {
  security_group_id            = aws_security_group.cluster.id
  referenced_security_group_id = aws_security_group.cluster.id
  ip_protocol                  = "-1"
  description                  = "intra-cluster"
}

# The APIs through the load balancer (a network load balancer keeps the client's address).
resource "aws_vpc_security_group_ingress_rule" "nomad_api" {
  for_each          = toset(var.allowed_api_cidrs)
  security_group_id = aws_security_group.cluster.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 4646
  to_port           = 4646
  description       = "Nomad HTTPS API"
}

resource "aws_vpc_security_group_ingress_rule" "consul_api" {
  for_each          = toset(var.allowed_api_cidrs)
  security_group_id = aws_security_group.cluster.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 8501
  to_port           = 8501
  description       = "Consul HTTPS API"
}

# Load balancer health checks come from inside the VPC.
resource "aws_vpc_security_group_ingress_rule" "lb_health" {
  for_each          = toset(["4646", "8501"])
  security_group_id = aws_security_group.cluster.id
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
  description       = "load balancer health checks"
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.cluster.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
  description       = "package mirrors, releases.hashicorp.com, AWS APIs, image registries"
}
