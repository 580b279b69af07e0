variable "cluster_name" {
  description = "The stack's cluster name (the label of `cluster \"...\"` in the stack file); pgnomad names its job files <cluster>-<component>.json."
  type        = string
  default     = "lab"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*$", var.cluster_name))
    error_message = "cluster_name must be lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "components" {
  description = "Components whose rendered jobs to submit (files rendered/jobs/<cluster>-<component>.json)."
  type        = list(string)
  default     = ["postgres", "pgbouncer", "pgadmin"]

  validation {
    condition     = length(var.components) > 0 && contains(var.components, "postgres")
    error_message = "components must include postgres."
  }
}

variable "rendered_dir" {
  description = "Directory written by `pgnomad render --format json --out <dir>`, relative to this configuration."
  type        = string
  default     = "rendered"
}
