output "job_ids" {
  description = "IDs of the submitted jobs, by component."
  value       = { for c, j in nomad_job.stack : c => j.id }
}

output "job_modify_indexes" {
  description = "Modify index of each job after the apply (changes on every new version)."
  value       = { for c, j in nomad_job.stack : c => j.modify_index }
}
