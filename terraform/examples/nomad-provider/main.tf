# Address, token and CA come from the environment: NOMAD_ADDR, NOMAD_TOKEN, NOMAD_CACERT
# (vagrant/.secrets/pgnomad.env for the lab, or the aws-cluster example's pgnomad.env).
provider "nomad" {}

locals {
  jobs_dir = "${path.module}/${var.rendered_dir}/jobs"
}

# pgnomad writes each job as the API's register body, {"Job": {...}}; nomad_job with
# json = true wants the job object itself, hence the unwrapping.
resource "nomad_job" "stack" {
  for_each = toset(var.components)

  jobspec = jsonencode(jsondecode(file("${local.jobs_dir}/${var.cluster_name}-${each.key}.json")).Job)
  json    = true

  # Wait for each deployment to become healthy, like `pgnomad run`.
  detach           = false
  purge_on_destroy = true
}
