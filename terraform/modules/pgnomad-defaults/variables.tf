variable "postgres_version" {
  description = "Postgres major version; the pgnomad image tag (pgnomad/postgres:<major>)."
  type        = number
  default     = 15

  validation {
    condition     = contains([13, 14, 15, 16, 17], var.postgres_version)
    error_message = "postgres_version must be a supported Postgres major version (13 to 17)."
  }
}

variable "lab" {
  description = "True for a lab cluster whose Consul servers lower session_ttl_min (so Patroni's ttl may go below 20)."
  type        = bool
  default     = true
}
