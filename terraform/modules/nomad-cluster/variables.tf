variable "name" {
  description = "Cluster name: prefix of every resource, value of the cloud auto-join tag, and part of the SSM parameter path."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,24}$", var.name))
    error_message = "name must be 2-25 characters: lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC to run in (for example module.network.vpc_id)."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "vpc_cidr_block" {
  description = "CIDR block of the VPC; intra-VPC traffic to the agents is allowed from it."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr_block, 0))
    error_message = "vpc_cidr_block must be a valid IPv4 CIDR block."
  }
}

variable "private_subnet_ids" {
  description = "Subnets for the servers and the client autoscaling group, one per availability zone (servers are spread round-robin)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "Give at least two private subnets, in different availability zones."
  }
}

variable "public_subnet_ids" {
  description = "Subnets for the API load balancer (Nomad 4646, Consul HTTPS 8501)."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 1
    error_message = "Give at least one public subnet for the load balancer."
  }
}

variable "public_api" {
  description = "Whether the API load balancer is internet-facing (reachable from allowed_api_cidrs) or internal to the VPC."
  type        = bool
  default     = true
}

variable "allowed_api_cidrs" {
  description = "CIDR blocks allowed to reach the Nomad (4646) and Consul (8501) APIs, e.g. your workstation's /32."
  type        = list(string)

  validation {
    condition     = length(var.allowed_api_cidrs) > 0 && alltrue([for c in var.allowed_api_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_api_cidrs must be a non-empty list of valid CIDR blocks."
  }
}

variable "server_count" {
  description = "Number of Nomad/Consul servers (a Raft quorum: 3 or 5)."
  type        = number
  default     = 3

  validation {
    condition     = contains([3, 5], var.server_count)
    error_message = "server_count must be 3 or 5."
  }
}

variable "server_instance_type" {
  description = "EC2 instance type of the servers."
  type        = string
  default     = "t3.medium"

  validation {
    condition     = can(regex("^[a-z0-9]+\\.[a-z0-9]+$", var.server_instance_type))
    error_message = "server_instance_type must be an EC2 instance type such as t3.medium."
  }
}

variable "client_instance_type" {
  description = "EC2 instance type of the clients that run Postgres."
  type        = string
  default     = "m6i.large"

  validation {
    condition     = can(regex("^[a-z0-9]+\\.[a-z0-9]+$", var.client_instance_type))
    error_message = "client_instance_type must be an EC2 instance type such as m6i.large."
  }
}

variable "client_min_size" {
  description = "Minimum size of the client autoscaling group (3 Postgres members need 3 clients)."
  type        = number
  default     = 3

  validation {
    condition     = var.client_min_size >= 1
    error_message = "client_min_size must be at least 1."
  }
}

variable "client_max_size" {
  description = "Maximum size of the client autoscaling group."
  type        = number
  default     = 6

  validation {
    condition     = var.client_max_size >= 1 && var.client_max_size <= 100
    error_message = "client_max_size must be from 1 to 100."
  }
}

variable "client_desired_capacity" {
  description = "Desired size of the client autoscaling group; null leaves it at client_min_size."
  type        = number
  default     = null
}

variable "ami_id" {
  description = "AMI for all instances; null picks the newest official Debian 12 (bookworm) amd64 AMI."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "ami_id must be null or look like ami-0123456789abcdef0."
  }
}

variable "key_name" {
  description = "EC2 key pair for SSH to the instances; null for none (use SSM Session Manager)."
  type        = string
  default     = null
}

variable "root_volume_size" {
  description = "Root EBS volume size in GiB (Docker images live there; Postgres data is on CSI volumes)."
  type        = number
  default     = 30

  validation {
    condition     = var.root_volume_size >= 16
    error_message = "root_volume_size must be at least 16 GiB."
  }
}

variable "datacenter" {
  description = "Nomad and Consul datacenter (pgnomad's default is dc1)."
  type        = string
  default     = "dc1"

  validation {
    condition     = can(regex("^[a-z0-9_-]+$", var.datacenter))
    error_message = "datacenter may contain lowercase letters, digits, dashes and underscores."
  }
}

variable "nomad_region" {
  description = "Nomad region (pgnomad's default is global)."
  type        = string
  default     = "global"

  validation {
    condition     = can(regex("^[a-z0-9_-]+$", var.nomad_region))
    error_message = "nomad_region may contain lowercase letters, digits, dashes and underscores."
  }
}

variable "node_pool" {
  description = "Nomad node pool of the clients (pgnomad's default is default)."
  type        = string
  default     = "default"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]+$", var.node_pool))
    error_message = "node_pool may contain letters, digits, dashes and underscores."
  }
}

variable "nomad_version" {
  description = "Nomad release installed by user-data."
  type        = string
  default     = "1.9.7"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.nomad_version))
    error_message = "nomad_version must be a release version such as 1.9.7."
  }
}

variable "nomad_sha256" {
  description = "SHA256 of nomad_<nomad_version>_linux_amd64.zip as published in HashiCorp's SHA256SUMS; user-data refuses a mismatch."
  type        = string
  default     = "e9c7337893eceb549557ef9ad341b3ae64f5f43e29ff1fb167b70cfd16748d2d"

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.nomad_sha256))
    error_message = "nomad_sha256 must be 64 lowercase hex digits."
  }
}

variable "consul_version" {
  description = "Consul release installed by user-data."
  type        = string
  default     = "1.20.5"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.consul_version))
    error_message = "consul_version must be a release version such as 1.20.5."
  }
}

variable "consul_sha256" {
  description = "SHA256 of consul_<consul_version>_linux_amd64.zip as published in HashiCorp's SHA256SUMS; user-data refuses a mismatch."
  type        = string
  default     = "75132816072b3c7da86f04153fc58fcfcf39abadee5279b3f72bec3cce01a16b"

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.consul_sha256))
    error_message = "consul_sha256 must be 64 lowercase hex digits."
  }
}

variable "consul_session_ttl_min" {
  description = "Consul servers' session_ttl_min. Patroni asks for sessions of ttl/2 seconds and Consul's default minimum is 10s, so a Patroni ttl below 20 needs this lowered (5s allows ttl = 10)."
  type        = string
  default     = "5s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.consul_session_ttl_min)) && try(tonumber(trimsuffix(var.consul_session_ttl_min, "s")) >= 1 && tonumber(trimsuffix(var.consul_session_ttl_min, "s")) <= 10, false)
    error_message = "consul_session_ttl_min must be a whole number of seconds from 1s to 10s, such as \"5s\"."
  }
}

variable "ebs_csi_plugin_id" {
  description = "CSI plugin ID under which the AWS EBS driver registers (the stack file's storage.plugin_id)."
  type        = string
  default     = "aws-ebs0"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_.-]+$", var.ebs_csi_plugin_id))
    error_message = "ebs_csi_plugin_id may contain letters, digits, dots, dashes and underscores."
  }
}

variable "ebs_csi_image" {
  description = "Container image of the AWS EBS CSI driver."
  type        = string
  default     = "public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver:v1.28.0"

  validation {
    condition     = can(regex(":v[0-9]+\\.[0-9]+\\.[0-9]+$", var.ebs_csi_image))
    error_message = "ebs_csi_image must be pinned to a vX.Y.Z tag."
  }
}

variable "backup_bucket_arns" {
  description = "ARNs of S3 buckets the instances may use as pgBackRest repositories (with the instance role's credentials)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.backup_bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]+$", a))])
    error_message = "backup_bucket_arns must be S3 bucket ARNs such as arn:aws:s3:::my-bucket."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
