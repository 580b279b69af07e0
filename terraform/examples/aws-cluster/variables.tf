variable "aws_region" {
  description = "AWS region to build the cluster in."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.aws_region))
    error_message = "aws_region must be an AWS region name such as us-east-1."
  }
}

variable "name" {
  description = "Cluster name (prefix of every resource)."
  type        = string
  default     = "pgnomad"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,24}$", var.name))
    error_message = "name must be 2-25 characters: lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "allowed_api_cidrs" {
  description = "CIDR blocks allowed to reach the Nomad and Consul APIs (your workstation's address as a /32)."
  type        = list(string)

  validation {
    condition     = length(var.allowed_api_cidrs) > 0 && alltrue([for c in var.allowed_api_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_api_cidrs must be a non-empty list of valid CIDR blocks."
  }
}

variable "postgres_version" {
  description = "Postgres major version of the stack (the image tag)."
  type        = number
  default     = 15
}
