//! `<c>-pgadmin`: pgAdmin with PgBouncer and every member already registered as servers.

use std::collections::BTreeMap;

use serde_json::json;

use crate::config::runtime::names;
use crate::config::{ConfigError, Runtime};
use crate::nomad::job::*;
use crate::stack::Secrets;

use super::common::*;

/// Where the admin password is written, under the task directory.
const PASSWORD_FILE: &str = "secrets/pgadmin_password";
/// The image's entrypoint, with the password read from its file first.
const ENTRYPOINT: &str =
    r#"PGADMIN_DEFAULT_PASSWORD="$(cat "$PGADMIN_DEFAULT_PASSWORD_FILE")" && export PGADMIN_DEFAULT_PASSWORD && exec /entrypoint.sh"#;

pub fn job(cx: &Context<'_>) -> Result<Job, ConfigError> {
    let stack = cx.stack;
    let c = cx.cluster();
    let job_id = names::pgadmin_job(c);
    let mut job = cx.job(job_id.clone(), "service");
    let holes = cx.runtime.pgadmin(cx.facts);
    let port_number = stack.pgadmin.port.value;

    let servers = cx.pack_template("pgadmin/servers.json", None, &holes, "secrets/servers.json", Change::Noop)?;
    // A file, not an `env = true` template: environment variables show in `docker inspect`
    // and Nomad's task environment. pgAdmin reads it on its first start only.
    let password = template(cx.runtime.secret_expr(&job_id, "pgadmin_password"), PASSWORD_FILE, Change::Restart);

    let mut task = Task {
        name: some("pgadmin"),
        driver: some("docker"),
        config: Some(BTreeMap::from([
            ("image".to_owned(), json!(stack.pgadmin.image)),
            ("ports".to_owned(), json!(["http"])),
            // Some 8.x entrypoints refuse to start unless PGADMIN_DEFAULT_PASSWORD is set
            // before they read PGADMIN_DEFAULT_PASSWORD_FILE: read it here, in the
            // container's own process, then run the image's entrypoint.
            ("entrypoint".to_owned(), json!(["/bin/sh", "-c", ENTRYPOINT])),
        ])),
        env: Some(BTreeMap::from([
            ("PGADMIN_DEFAULT_EMAIL".to_owned(), stack.pgadmin.email.value.clone()),
            ("PGADMIN_LISTEN_PORT".to_owned(), port_number.to_string()),
            ("PGADMIN_DEFAULT_PASSWORD_FILE".to_owned(), format!("/{PASSWORD_FILE}")),
            // Read on first start: the servers appear without anyone adding them by hand.
            ("PGADMIN_SERVER_JSON_FILE".to_owned(), "/secrets/servers.json".to_owned()),
            ("PGADMIN_CONFIG_UPGRADE_CHECK_ENABLED".to_owned(), "False".to_owned()),
        ])),
        resources: Some(resources(stack.pgadmin.cpu, stack.pgadmin.memory_mb)),
        templates: Some(vec![servers, password]),
        ..Task::default()
    };
    if let Secrets::Vault { role, .. } = &stack.secrets {
        // Its password template reads Vault: without a `vault` block the task gets no token.
        task.vault = Some(Vault { role: role.clone(), change_mode: some("restart") });
    }
    finish_task(&mut task, PGADMIN_OWNER);
    job.task_groups = Some(vec![TaskGroup {
        name: some("pgadmin"),
        count: Some(1),
        networks: Some(vec![bridge(vec![port("http", port_number)])]),
        services: Some(vec![service(names::pgadmin_service(c), "http", vec![http_check("pgadmin ping", "/misc/ping", "http")])]),
        tasks: Some(vec![task]),
        // Long enough for Consul to drop the service before the UI stops answering.
        shutdown_delay: Some(Nanos::secs(2)),
        disconnect: Some(DisconnectStrategy { lost_after: Some(Nanos::secs(300)), replace: Some(true), reconcile: some("best_score") }),
        ..TaskGroup::default()
    }]);
    Ok(job)
}
