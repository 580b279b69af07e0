terraform {
  # No providers: this module only computes values, so it can be validated offline.
  required_version = ">= 1.5.0"
}
